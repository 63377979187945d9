"""The dataset folder: colour + depth image pairs on disk, read the same way everywhere.

One reader for the layout of the project's shared data (``../shared/data/rgbd/<source>/``) and of
``bag decompress --images``; the bag tool (``bag.dataset``), the training loaders
(``training.datasets``), the player node (``ros.sources``) and the tests all read through it.
No ROS and no torch imports. docs/folder_format.md describes the format for users.

Layout::

    <folder>/color/<id>.png|.jpg|.jpeg   8-bit RGB (or grey), same size as its depth
    <folder>/depth/<id>.png              16-bit single channel, 0 = no measurement
    <folder>/meta.json                   optional: depth_scale_per_m, intrinsics
    <folder>/index.csv                   optional: id,color,depth[,...] rows, in play order

With ``index.csv`` its rows are the pairs, in the file's order, with paths relative to the folder
(further columns, such as the shared data's ``orig_color_path``, are ignored). Without it colour
and depth are paired by file stem, in stem order, and every image must have its partner.

Grey stays grey: a single-channel colour image (also grey + alpha) is returned as HxW uint8, the
REP 118 ``mono8`` form, which both codec backends code as grey; code that needs three channels
(the learned model's training input) repeats the channel itself. Alpha is dropped.

Every problem with a folder is a :class:`DatasetError` whose message names the file and says what
to fix.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from rgbd_codec_ros.codec.base import CodecError

COLOR_SUFFIXES = (".png", ".jpg", ".jpeg")
DEPTH_SUFFIX = ".png"
#: units per metre when meta.json does not say (REP 118 millimetres)
DEFAULT_DEPTH_SCALE_PER_M = 1000.0
#: meta.json keys of the 3x3 camera matrix, in order of preference (the shared 7-Scenes folder
#: states only its depth camera's)
INTRINSICS_KEYS = ("intrinsics", "intrinsics_depth")
INDEX_COLUMNS = ("id", "color", "depth")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"


class DatasetError(CodecError):
    """A data folder or file that cannot be used; the message says what to fix.

    A CodecError (hence a ValueError), so the command line and the nodes, which report
    CodecErrors as one-line errors, report these the same way.
    """


@dataclass(frozen=True)
class PairFiles:
    """The two files of one pair, by path."""
    id: str
    color: Path
    depth: Path


# --------------------------------------------------------------------------- meta.json

def read_meta(folder) -> Dict[str, Any]:
    """The folder's meta.json as a dict ({} without one)."""
    path = Path(folder) / "meta.json"
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DatasetError(f"{path} is not readable JSON ({exc}); fix it or remove it "
                           "(without it depth is taken as millimetres)") from exc
    if not isinstance(meta, dict):
        raise DatasetError(f"{path} must hold a JSON object such as {{\"depth_scale_per_m\": 1000}}, "
                           f"not a {type(meta).__name__}")
    return meta


def depth_scale_of(meta: Dict[str, Any], where: str = "meta.json") -> float:
    """``depth_scale_per_m`` (depth units per metre) of a meta dict; 1000 when absent."""
    value = meta.get("depth_scale_per_m", DEFAULT_DEPTH_SCALE_PER_M)
    return checked_depth_scale(value, f"{where}: depth_scale_per_m")


def checked_depth_scale(value: Any, what: str = "depth_scale_per_m") -> float:
    try:
        scale = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        scale = math.nan
    if not math.isfinite(scale) or scale <= 0:
        raise DatasetError(f"{what} must be a number > 0 (depth units per metre: 1000 for "
                           f"millimetres), got {value!r}")
    return scale


def camera_matrix_of(meta: Dict[str, Any], where: str = "meta.json") -> Optional[np.ndarray]:
    """The 3x3 camera matrix [[fx,0,cx],[0,fy,cy],[0,0,1]] of a meta dict (None if it has none),
    for images of the folder's own size."""
    for key in INTRINSICS_KEYS:
        if key not in meta:
            continue
        value = meta[key]
        try:
            k = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            k = np.zeros(0)
        if k.shape != (3, 3) or not np.all(np.isfinite(k)) or k[0, 0] <= 0 or k[1, 1] <= 0:
            raise DatasetError(f"{where}: {key} must be a 3x3 camera matrix [[fx, 0, cx], [0, fy, cy], "
                               f"[0, 0, 1]] with fx, fy > 0, got {value!r}")
        return k
    return None


# --------------------------------------------------------------------------- listing pairs

def is_dataset_folder(path) -> bool:
    path = Path(path)
    return (path / "color").is_dir() and (path / "depth").is_dir()


def list_pairs(folder) -> List[PairFiles]:
    """The pairs of a dataset folder: index.csv's rows in its order, else by file stem."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DatasetError(f"dataset folder {folder} does not exist")
    if not is_dataset_folder(folder):
        raise DatasetError(f"{folder} is not a dataset folder: it must hold color/ and depth/ "
                           "sub-folders")
    index = folder / "index.csv"
    pairs = _pairs_from_index(folder, index) if index.is_file() else _pairs_by_stem(folder)
    if not pairs:
        raise DatasetError(
            f"{index}: lists no pairs; add rows id,color,depth or remove it" if index.is_file() else
            f"{folder}: no colour image in color/ (.png, .jpg) with its depth/<id>.png")
    return pairs


def _pairs_from_index(folder: Path, index: Path) -> List[PairFiles]:
    try:
        with index.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{index}: cannot read it as CSV ({exc}); fix it or remove it "
                           "(pairs are then matched by file name)") from exc
    if not rows:
        raise DatasetError(f"{index} is empty; it needs a header line id,color,depth and one row per "
                           "pair (or remove it: pairs are then matched by file name)")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in INDEX_COLUMNS if c not in header]
    if missing:
        raise DatasetError(f"{index}: the header {','.join(header)!r} lacks {', '.join(missing)}; "
                           "the first line must name the columns id,color,depth")
    col = {c: header.index(c) for c in INDEX_COLUMNS}
    pairs: List[PairFiles] = []
    seen: Dict[str, int] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue                                 # a blank line
        where = f"{index} line {line}"
        if len(row) < len(header):
            raise DatasetError(f"{where}: {len(row)} fields where the header has {len(header)}; "
                               "each row needs id,color,depth")
        pair_id, color, depth = (row[col[c]].strip() for c in INDEX_COLUMNS)
        for name, value in (("id", pair_id), ("color", color), ("depth", depth)):
            if not value:
                raise DatasetError(f"{where}: the {name} field is empty")
        if pair_id in seen:
            raise DatasetError(f"{where}: id {pair_id!r} is also on line {seen[pair_id]}; ids must be "
                               "unique")
        seen[pair_id] = line
        paths = []
        for name, value in (("colour", color), ("depth", depth)):
            path = folder / value
            if not path.is_file():
                raise DatasetError(f"{where}: the {name} image {value} does not exist in {folder}; "
                                   "fix the row or add the file")
            paths.append(path)
        pairs.append(PairFiles(pair_id, paths[0], paths[1]))
    return pairs


def _images_by_stem(folder: Path, suffixes) -> Dict[str, Path]:
    out: Dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in suffixes or not path.is_file():
            continue
        if path.stem in out:
            raise DatasetError(f"{out[path.stem].name} and {path.name} in {folder} have the same id "
                               f"{path.stem!r}; keep one, or list the pairs in index.csv")
        out[path.stem] = path
    return out


def _pairs_by_stem(folder: Path) -> List[PairFiles]:
    colors = _images_by_stem(folder / "color", COLOR_SUFFIXES)
    depths = _images_by_stem(folder / "depth", (DEPTH_SUFFIX,))
    for have, lack, what in ((colors, depths, "depth/{}.png"), (depths, colors, "color/{}.png|.jpg")):
        orphans = sorted(set(have) - set(lack))
        if orphans:
            shown = ", ".join(have[s].name for s in orphans[:3]) + (" ..." if len(orphans) > 3 else "")
            raise DatasetError(
                f"{folder}: {len(orphans)} image(s) without a partner ({shown}): each needs "
                f"{what.format(orphans[0])}; add it, remove the image, or list the pairs in index.csv")
    return [PairFiles(stem, colors[stem], depths[stem]) for stem in sorted(set(colors) & set(depths))]


# --------------------------------------------------------------------------- reading images

def _decode(path, what: str, jpeg_allowed: bool) -> Tuple[np.ndarray, str]:
    """(decoded array, 'PNG' | 'JPEG'), the format known by the file's signature, not its name."""
    import imagecodecs

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read the {what} image {path}: {exc.strerror or exc}") from exc
    if data.startswith(_PNG_SIGNATURE):
        kind, decode = "PNG", imagecodecs.png_decode
    elif data.startswith(_JPEG_SIGNATURE) and jpeg_allowed:
        kind, decode = "JPEG", imagecodecs.jpeg8_decode
    else:
        wanted = "a PNG or JPEG file" if jpeg_allowed else "a PNG file"
        raise DatasetError(f"the {what} image {path} is not {wanted}"
                           + (" (it is empty)" if not data else "") + "; replace it")
    try:
        return np.asarray(decode(data)), kind
    except Exception as exc:  # imagecodecs raises an error type of its own per codec
        raise DatasetError(f"the {what} image {path} is a damaged {kind} ({exc}); replace it") from exc


def read_color(path) -> np.ndarray:
    """A colour image as uint8 HxWx3 RGB, or HxW for a grey one (alpha dropped)."""
    img, kind = _decode(path, "colour", jpeg_allowed=True)
    if img.dtype != np.uint8:
        raise DatasetError(f"the colour image {path} is {img.dtype}; colour must be 8 bits per channel "
                           "(RGB or grey)")
    if img.ndim == 3 and img.shape[2] in (1, 2):     # grey, grey + alpha
        img = img[:, :, 0]
    elif img.ndim == 3 and img.shape[2] == 4:
        if kind == "JPEG":
            raise DatasetError(f"the colour image {path} is a CMYK JPEG; convert it to RGB")
        img = img[:, :, :3]                          # RGBA
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
        raise DatasetError(f"the colour image {path} has shape {img.shape}; expected RGB or grey")
    return np.ascontiguousarray(img)


def read_depth(path) -> np.ndarray:
    """A depth image as uint16 HxW, in the folder's units (0 = no measurement)."""
    img, _ = _decode(path, "depth", jpeg_allowed=False)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.dtype != np.uint16 or img.ndim != 2:
        layout = f"{img.shape[2]} channels" if img.ndim == 3 else "one channel"
        raise DatasetError(f"the depth image {path} is {img.dtype} with {layout}; depth must be a "
                           "16-bit single-channel PNG (0 = no measurement)")
    return np.ascontiguousarray(img)


def read_pair(pair: PairFiles) -> Tuple[np.ndarray, np.ndarray]:
    """(colour uint8 HxWx3 RGB or HxW grey, depth uint16 HxW) of one pair, checked to match."""
    color = read_color(pair.color)
    depth = read_depth(pair.depth)
    if color.shape[:2] != depth.shape:
        raise DatasetError(f"pair {pair.id!r}: the colour {pair.color.name} is "
                           f"{color.shape[1]}x{color.shape[0]} but the depth {pair.depth.name} is "
                           f"{depth.shape[1]}x{depth.shape[0]}; a pair's images must be the same size "
                           "(depth registered to the colour)")
    return color, depth


# --------------------------------------------------------------------------- one folder

class DatasetFolder:
    """One dataset folder: its pairs in order, depth units and camera matrix; ``read(i)`` decodes
    pair ``i``. ``depth_scale_per_m`` given here overrides meta.json's."""

    def __init__(self, path, depth_scale_per_m: Optional[float] = None):
        self.path = Path(path).expanduser()
        self.pairs = list_pairs(self.path)
        self.meta = read_meta(self.path)
        where = str(self.path / "meta.json")
        self.depth_scale_per_m = (depth_scale_of(self.meta, where) if depth_scale_per_m is None
                                  else checked_depth_scale(depth_scale_per_m))
        #: 3x3, for images of the folder's own size; None if meta.json states none
        self.camera_matrix = camera_matrix_of(self.meta, where)

    def __len__(self) -> int:
        return len(self.pairs)

    def read(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        return read_pair(self.pairs[index])
