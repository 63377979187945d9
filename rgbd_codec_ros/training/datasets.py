"""RGB-D training / evaluation data: discovery, loading, crops.

Formats (``discover`` recognises them by layout; see docs/training.md):

``folder``
    The project's layout (as in ``../shared/data/rgbd/<source>/``): ``color/<id>.png|.jpg``,
    ``depth/<id>.png`` (16-bit, 0 = invalid), ``meta.json`` with ``depth_scale_per_m``
    (units per metre; 1000 if the file is missing), optional ``index.csv`` (id,color,depth),
    read by ``rgbd_codec_ros.dataset_folder`` (docs/folder_format.md).
    A directory whose sub-directories are such folders gives one source per sub-directory.
``nyu``
    NYU Depth v2 ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3 = HDF5, read with h5py).
    MATLAB stores ``images`` as H x W x 3 x N and ``depths`` as H x W x N (float metres);
    HDF5 / h5py sees the reversed axes, ``images`` (N, 3, W, H) and ``depths`` (N, W, H),
    so each image is transposed back to H x W.
``tum``
    A TUM RGB-D sequence: ``rgb.txt`` and ``depth.txt`` ("timestamp path" lines, '#' comments),
    depth PNGs with 5000 units per metre. Colour and depth frames are associated by nearest
    timestamp: candidate pairs with |t_rgb - t_depth| <= ``max_dt`` (0.02 s default) are taken
    greedily in order of increasing difference, each frame used at most once.
``sun``
    SUN RGB-D scene folders, each with ``image/<name>.jpg`` and ``depth/<name>.png``
    (found anywhere below the given directory). The depth PNG of SUN RGB-D stores millimetres
    rotated by 3 bits, as read by the SUN RGB-D toolbox (``read3dPoints.m``:
    ``bitor(bitshift(d,-3), bitshift(d,16-3))``, then /1000): here ``mm = (v >> 3) | ((v << 13)
    & 0xFFFF)``, metres = mm / 1000. The toolbox's extra clip at 8 m is not applied (the model's
    fixed depth range clips instead). One source per first-level sub-directory (``sun/kv1``, ...).

Every loader returns colour as uint8 H x W x 3 (a grey image's channel repeated: the model
codes three channels) and depth either as uint16 with a scale
(units per metre) or float32 metres; 0 / NaN / non-finite = no measurement.
For training the depth is converted to metres, divided by the model's fixed ``depth_range_m``
and clipped to [0, 1]; holes are filled as the learned backend fills them before coding, and
a validity mask (1 = measured and within the range) is returned alongside for the loss.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

# DatasetError is this module's error type too (discovery, splits, weights)
from rgbd_codec_ros.dataset_folder import (
    COLOR_SUFFIXES, DatasetError, DatasetFolder, PairFiles, is_dataset_folder, read_pair)

IMAGE_EXTS = COLOR_SUFFIXES
TUM_DEPTH_SCALE = 5000.0
SUN_DEPTH_SCALE = 1000.0


@dataclass(frozen=True)
class PairRef:
    """One colour + depth pair, by reference (cheap, picklable)."""
    source: str
    image_id: str
    kind: str                 # 'folder' | 'tum' | 'sun' | 'nyu'
    color: str                # path (for nyu: the .mat path)
    depth: str = ""           # path ('' for nyu)
    index: int = -1           # nyu: image index in the .mat
    depth_scale_per_m: float = 1000.0


@dataclass
class Source:
    name: str
    kind: str
    root: str
    pairs: List[PairRef]
    meta: Dict = field(default_factory=dict)


@dataclass
class RawPair:
    color: np.ndarray          # uint8 HxWx3
    depth: np.ndarray          # uint16 (scaled) or float32 metres
    depth_scale_per_m: float   # units per metre (1.0 for float metres)

    def depth_metres(self) -> Tuple[np.ndarray, np.ndarray]:
        """(depth in metres float32 with invalid = 0, valid mask bool)."""
        d = self.depth.astype(np.float32)
        valid = np.isfinite(d) & (d > 0)
        m = np.where(valid, d / np.float32(self.depth_scale_per_m), np.float32(0)).astype(np.float32)
        return m, valid


# --------------------------------------------------------------------------- image reading
def _as_rgb(color: np.ndarray) -> np.ndarray:
    """The model's three channels: a grey image (which the folder reader keeps grey) repeated."""
    return np.ascontiguousarray(np.repeat(color[:, :, None], 3, axis=2)) if color.ndim == 2 else color


def sun_depth_to_mm(v: np.ndarray) -> np.ndarray:
    """Undo SUN RGB-D's 3-bit rotation of its depth PNGs (toolbox convention): mm as uint16."""
    v = v.astype(np.uint16)
    return ((v >> 3) | (v << 13)).astype(np.uint16)


def sun_mm_to_stored(mm: np.ndarray) -> np.ndarray:
    """Inverse of :func:`sun_depth_to_mm` (rotate left by 3): what SUN's PNGs contain."""
    mm = mm.astype(np.uint16)
    return ((mm << 3) | (mm >> 13)).astype(np.uint16)


_H5_CACHE: Dict[str, object] = {}


def _nyu_file(path: str):
    """An open h5py file per process (handles are not shared across data-loader workers)."""
    key = f"{os.getpid()}:{path}"
    f = _H5_CACHE.get(key)
    if f is None:
        import h5py
        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            raise DatasetError(f"cannot open {path} as a MATLAB v7.3 / HDF5 file: {exc}") from exc
        _H5_CACHE[key] = f
    return f


def load_raw(ref: PairRef) -> RawPair:
    """Read one pair from disk."""
    if ref.kind == "nyu":
        f = _nyu_file(ref.color)
        img = np.asarray(f["images"][ref.index])          # (3, W, H)
        dep = np.asarray(f["depths"][ref.index])          # (W, H) metres
        color = np.ascontiguousarray(np.transpose(img, (2, 1, 0))).astype(np.uint8)
        depth = np.ascontiguousarray(dep.T).astype(np.float32)
        return RawPair(color, depth, 1.0)
    color, depth = read_pair(PairFiles(f"{ref.source}/{ref.image_id}", Path(ref.color), Path(ref.depth)))
    color = _as_rgb(color)
    if ref.kind == "sun":
        depth = sun_depth_to_mm(depth)
    return RawPair(color, depth, ref.depth_scale_per_m)


# --------------------------------------------------------------------------- discovery
def _list_images(folder: str, exts=IMAGE_EXTS) -> Dict[str, str]:
    out = {}
    for name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(name)
        if ext.lower() in exts:
            out.setdefault(stem, os.path.join(folder, name))
    return out


def _is_tum(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "rgb.txt")) and os.path.isfile(os.path.join(path, "depth.txt"))


def load_folder_source(path: str, name: Optional[str] = None) -> Source:
    path = os.path.normpath(path)
    name = name or os.path.basename(path)
    folder = DatasetFolder(path)
    scale = folder.depth_scale_per_m
    pairs = [PairRef(name, p.id, "folder", str(p.color), str(p.depth), -1, scale) for p in folder.pairs]
    return Source(name, "folder", path, pairs, folder.meta)


def _read_tum_list(path: str) -> List[Tuple[float, str]]:
    out = []
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.replace(",", " ").split()
            if len(parts) < 2:
                raise DatasetError(f"{path}:{lineno}: expected 'timestamp filename'")
            try:
                out.append((float(parts[0]), parts[1]))
            except ValueError as exc:
                raise DatasetError(f"{path}:{lineno}: bad timestamp {parts[0]!r}") from exc
    return out


def associate_timestamps(a: Sequence[float], b: Sequence[float], max_dt: float = 0.02
                         ) -> List[Tuple[int, int]]:
    """Pair indices of ``a`` and ``b`` by nearest timestamp, |dt| <= max_dt, each used once.

    Candidates are taken greedily in increasing |dt| (ties by index), the result sorted by ``a``.
    """
    a_arr = np.asarray(a, dtype=np.float64)
    b_arr = np.asarray(b, dtype=np.float64)
    if len(a_arr) == 0 or len(b_arr) == 0:
        return []
    order = np.argsort(b_arr, kind="stable")
    bs = b_arr[order]
    cands = []
    for i, t in enumerate(a_arr):
        lo = np.searchsorted(bs, t - max_dt, side="left")
        hi = np.searchsorted(bs, t + max_dt, side="right")
        for k in range(lo, hi):
            cands.append((abs(bs[k] - t), i, int(order[k])))
    cands.sort()
    used_a, used_b, pairs = set(), set(), []
    for _, i, j in cands:
        if i in used_a or j in used_b:
            continue
        used_a.add(i)
        used_b.add(j)
        pairs.append((i, j))
    pairs.sort()
    return pairs


def load_tum_source(path: str, name: Optional[str] = None, max_dt: float = 0.02) -> Source:
    path = os.path.normpath(path)
    name = name or os.path.basename(path)
    rgb = _read_tum_list(os.path.join(path, "rgb.txt"))
    dep = _read_tum_list(os.path.join(path, "depth.txt"))
    matches = associate_timestamps([t for t, _ in rgb], [t for t, _ in dep], max_dt)
    pairs = [PairRef(name, f"{rgb[i][0]:.6f}", "tum", os.path.join(path, rgb[i][1]),
                     os.path.join(path, dep[j][1]), -1, TUM_DEPTH_SCALE) for i, j in matches]
    if not pairs:
        raise DatasetError(f"{path}: no rgb/depth frames within {max_dt} s of each other")
    meta = {"dataset": "TUM RGB-D", "depth_scale_per_m": TUM_DEPTH_SCALE, "max_dt_s": max_dt,
            "rgb_frames": len(rgb), "depth_frames": len(dep)}
    return Source(name, "tum", path, pairs, meta)


def load_sun_sources(path: str, name: Optional[str] = None) -> List[Source]:
    path = os.path.normpath(path)
    base = name or os.path.basename(path)
    groups: Dict[str, List[PairRef]] = {}
    for dirpath, dirnames, _ in os.walk(path):
        dirnames.sort()
        if "image" in dirnames and "depth" in dirnames:
            imgs = _list_images(os.path.join(dirpath, "image"))
            deps = _list_images(os.path.join(dirpath, "depth"), (".png",))
            rel = os.path.relpath(dirpath, path)
            if len(imgs) == 1 and len(deps) == 1:
                matched = [(next(iter(imgs.values())), next(iter(deps.values())), "")]
            else:
                matched = [(imgs[s], deps[s], s) for s in sorted(set(imgs) & set(deps))]
            first = rel.split(os.sep)[0] if rel != "." else ""
            src = f"{base}/{first}" if first and rel != first else base
            for c, d, s in matched:
                iid = rel.replace(os.sep, "/") + (f"/{s}" if s else "")
                groups.setdefault(src, []).append(PairRef(src, iid, "sun", c, d, -1, SUN_DEPTH_SCALE))
            dirnames[:] = [x for x in dirnames if x not in ("image", "depth")]
    if not groups:
        raise DatasetError(f"{path}: no SUN RGB-D scene folders (image/*.jpg + depth/*.png)")
    meta = {"dataset": "SUN RGB-D", "depth_units": "mm rotated by 3 bits (toolbox convention)"}
    return [Source(k, "sun", path, v, dict(meta)) for k, v in sorted(groups.items())]


def load_nyu_source(path: str, name: Optional[str] = None) -> Source:
    name = name or os.path.splitext(os.path.basename(path))[0]
    f = _nyu_file(path)
    for key in ("images", "depths"):
        if key not in f:
            raise DatasetError(f"{path}: no '{key}' dataset; expected NYU Depth v2 labeled .mat")
    n_img, n_dep = f["images"].shape[0], f["depths"].shape[0]
    if f["images"].ndim != 4 or f["images"].shape[1] != 3 or f["depths"].ndim != 3 or n_img != n_dep:
        raise DatasetError(f"{path}: images {f['images'].shape} / depths {f['depths'].shape} are not "
                           "the NYU layout (N,3,W,H) / (N,W,H)")
    pairs = [PairRef(name, f"{i:04d}", "nyu", path, "", i, 1.0) for i in range(n_img)]
    return Source(name, "nyu", path, pairs, {"dataset": "NYU Depth v2 (labeled)", "depth_units": "metres"})


def _sub_dirs(path: str) -> List[str]:
    return [os.path.join(path, d) for d in sorted(os.listdir(path))
            if os.path.isdir(os.path.join(path, d)) and not d.startswith(".")]


def _has_sun(path: str, depth: int = 4) -> bool:
    for dirpath, dirnames, _ in os.walk(path):
        if "image" in dirnames and "depth" in dirnames:
            return True
        if dirpath[len(path):].count(os.sep) >= depth:
            dirnames[:] = []
    return False


def detect_sources(path: str, max_dt: float = 0.02) -> List[Source]:
    """Recognise the layout of ``path`` and return its sources."""
    if not os.path.exists(path):
        raise DatasetError(f"data path {path} does not exist")
    if os.path.isfile(path):
        if path.lower().endswith(".mat"):
            return [load_nyu_source(path)]
        raise DatasetError(f"{path}: a data file must be an NYU Depth v2 labeled .mat")
    if is_dataset_folder(path):
        return [load_folder_source(path)]
    if _is_tum(path):
        return [load_tum_source(path, max_dt=max_dt)]
    subs = _sub_dirs(path)
    if subs and any(is_dataset_folder(s) or _is_tum(s) for s in subs):
        out = []
        for s in subs:
            if is_dataset_folder(s):
                out.append(load_folder_source(s))
            elif _is_tum(s):
                out.append(load_tum_source(s, max_dt=max_dt))
        return out
    if _has_sun(path):
        return load_sun_sources(path)
    raise DatasetError(
        f"{path}: unrecognised layout; expected color/ + depth/ (+ meta.json), a folder of such "
        "folders, a TUM sequence (rgb.txt + depth.txt), SUN RGB-D scenes (image/ + depth/) or an "
        "NYU .mat file")


def discover(data: Iterable[str] = (), *, nyu: Iterable[str] = (), tum: Iterable[str] = (),
             sun: Iterable[str] = (), max_dt: float = 0.02) -> List[Source]:
    """All sources under the given paths; explicit format lists skip autodetection."""
    sources: List[Source] = []
    for p in data:
        sources.extend(detect_sources(p, max_dt=max_dt))
    for p in nyu:
        if not os.path.isfile(p):
            raise DatasetError(f"NYU .mat file {p} does not exist")
        sources.append(load_nyu_source(p))
    for p in tum:
        if not _is_tum(p):
            raise DatasetError(f"{p}: not a TUM sequence (needs rgb.txt and depth.txt)")
        sources.append(load_tum_source(p, max_dt=max_dt))
    for p in sun:
        if not os.path.isdir(p):
            raise DatasetError(f"SUN RGB-D directory {p} does not exist")
        sources.extend(load_sun_sources(p))
    if not sources:
        raise DatasetError("no data given: pass --data DIR (or --nyu-mat / --tum / --sun)")
    seen: Dict[str, int] = {}
    for s in sources:  # make names unique
        if s.name in seen:
            seen[s.name] += 1
            s.name = f"{s.name}#{seen[s.name]}"
            s.pairs = [dataclasses.replace(p, source=s.name) for p in s.pairs]
        else:
            seen[s.name] = 1
    return sources


def split_sources(sources: List[Source], val_patterns: Sequence[str]) -> Tuple[List[Source], List[Source]]:
    """(train, val): a source goes to validation if its name matches one of the patterns (fnmatch)."""
    if not val_patterns:
        return list(sources), []
    val, train = [], []
    for s in sources:
        (val if any(fnmatch.fnmatchcase(s.name, p) for p in val_patterns) else train).append(s)
    names = ", ".join(s.name for s in sources)
    for p in val_patterns:
        if not any(fnmatch.fnmatchcase(s.name, p) for s in sources):
            raise DatasetError(f"--val-source {p!r} matches no source; sources are: {names}")
    if not train:
        raise DatasetError(f"--val-source leaves no training source; sources are: {names}")
    return train, val


def split_within_sources(sources: List[Source], fraction: float, gap: int = 0
                         ) -> Tuple[List[Source], List[Source]]:
    """(train, val) held out *within* each source: the last ``fraction`` of its pairs, in the
    source's own (time) order, as one contiguous block; the ``gap`` pairs just before that block
    belong to neither side, so no validation frame has a near-duplicate neighbour in training.

    Frames of one source are consecutive video frames, so random frames would leak; a
    contiguous tail is the split that stays honest. Sources too small to give a training and a
    validation pair stay wholly in training.
    """
    if not 0.0 < fraction < 1.0:
        raise DatasetError(f"--val-fraction must be between 0 and 1 (exclusive), got {fraction}")
    if gap < 0:
        raise DatasetError(f"--val-gap must be >= 0, got {gap}")
    train, val = [], []
    for s in sources:
        n = len(s.pairs)
        k = max(1, int(round(n * fraction)))
        if n - k - gap < 1:
            train.append(s)
            continue
        val.append(dataclasses.replace(s, pairs=s.pairs[n - k:]))
        train.append(dataclasses.replace(s, pairs=s.pairs[:n - k - gap]))
    if not val:
        raise DatasetError("--val-fraction: no source has enough pairs to hold any out")
    return train, val


def parse_source_weights(items: Sequence[str]) -> Dict[str, float]:
    """['name=0.2', 'realsense_f200_*=0'] -> dict (patterns allowed)."""
    out: Dict[str, float] = {}
    for it in items or ():
        if "=" not in it:
            raise DatasetError(f"--source-weight {it!r}: expected NAME=WEIGHT")
        k, v = it.rsplit("=", 1)
        try:
            w = float(v)
        except ValueError as exc:
            raise DatasetError(f"--source-weight {it!r}: weight must be a number") from exc
        if not np.isfinite(w) or w < 0:
            raise DatasetError(f"--source-weight {it!r}: weight must be >= 0")
        out[k] = w
    return out


def pair_weights(sources: List[Source], weights: Dict[str, float]) -> Tuple[List[PairRef], np.ndarray]:
    """Flatten sources to pairs with per-pair sampling probabilities.

    A source's weight (default 1) is its share relative to its size: each source is drawn with
    probability proportional to weight * number_of_pairs, i.e. a source of weight 0.5 is drawn half
    as often per pair as a source of weight 1. Weight 0 leaves a source out.
    """
    pairs: List[PairRef] = []
    probs: List[float] = []
    for s in sources:
        w = 1.0
        for pat, val in weights.items():
            if fnmatch.fnmatchcase(s.name, pat):
                w = val
        pairs.extend(s.pairs)
        probs.extend([w] * len(s.pairs))
    p = np.asarray(probs, dtype=np.float64)
    if p.sum() <= 0:
        raise DatasetError("all training sources have weight 0")
    return pairs, p / p.sum()


# --------------------------------------------------------------------------- tensors
def to_training_arrays(raw: RawPair, depth_range_m: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rgb float32 3xHxW in [0,1], depth float32 1xHxW normalised, valid float32 1xHxW).

    The depth is the model's input exactly as the learned backend prepares it: metres / range
    clipped to [0, 1], holes filled by the backend's pull-push interpolation
    (``codec.learned.depth.fill_holes``). ``valid`` (the loss mask) is 1 where the sensor
    measured a depth within the range; holes and beyond-range pixels (which the backend restores
    from its lossless masks, whatever the model outputs there) are 0.
    """
    from rgbd_codec_ros.codec.learned.depth import fill_holes
    rgb = raw.color.astype(np.float32).transpose(2, 0, 1) / 255.0
    m, valid = raw.depth_metres()
    norm = np.clip(m / np.float32(depth_range_m), 0.0, 1.0).astype(np.float32)
    in_range = valid & (m <= np.float32(depth_range_m))
    d = fill_holes(norm, valid)
    return rgb, d[None], in_range[None].astype(np.float32)


def _pad_to(arrs, h, w):
    """Pad CxHxW arrays bottom/right to at least h x w; returns arrays, pad mask (1 = original)."""
    H, W = arrs[0].shape[1:]
    ph, pw = max(0, h - H), max(0, w - W)
    if ph == 0 and pw == 0:
        return arrs, None
    out = [np.pad(a, ((0, 0), (0, ph), (0, pw)), mode="edge") for a in arrs]
    keep = np.zeros((1, H + ph, W + pw), np.float32)
    keep[:, :H, :W] = 1
    return out, keep


def crop_raw(raw: RawPair, y: int, x: int, h: int, w: int) -> RawPair:
    """Crop a raw pair; where the window leaves the image, colour is edge-padded and depth is a hole."""
    color = raw.color[y:y + h, x:x + w]
    depth = raw.depth[y:y + h, x:x + w]
    ph, pw = h - color.shape[0], w - color.shape[1]
    if ph or pw:
        color = np.pad(color, ((0, ph), (0, pw), (0, 0)), mode="edge")
        depth = np.pad(depth, ((0, ph), (0, pw)), mode="constant", constant_values=0)
    return RawPair(np.ascontiguousarray(color), np.ascontiguousarray(depth), raw.depth_scale_per_m)


def seed_for(*ints: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(i) & 0xFFFFFFFF for i in ints]))


class TrainCrops:
    """Map-style dataset: item k = sample (k % B) of global step (k // B) on this rank.

    Everything random (which pair, crop position, flips) is a function of (seed, step, slot),
    so a run is reproducible and resumable regardless of data-loader workers, and the
    ``world_size`` ranks draw disjoint slots of the same global batch.
    """

    def __init__(self, pairs: List[PairRef], probs: np.ndarray, crop: int, batch_size: int,
                 depth_range_m: float, seed: int = 0, rank: int = 0, world_size: int = 1,
                 hflip: bool = True, vflip: bool = False, color_jitter: float = 0.0):
        if crop % 64 != 0 or crop < 128:
            raise DatasetError(f"--crop must be a multiple of 64 and >= 128, got {crop}")
        self.pairs, self.probs = pairs, np.asarray(probs, np.float64)
        self.crop, self.batch_size = int(crop), int(batch_size)
        self.depth_range_m = float(depth_range_m)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.hflip, self.vflip = hflip, vflip
        if not 0.0 <= color_jitter < 1.0:
            raise DatasetError(f"--color-jitter must be in [0, 1), got {color_jitter}")
        self.color_jitter = float(color_jitter)
        self._step_cache: Tuple[int, Optional[np.ndarray]] = (-1, None)

    def __len__(self) -> int:
        return 2 ** 62

    def indices_for_step(self, step: int) -> np.ndarray:
        if self._step_cache[0] != step:
            rng = seed_for(self.seed, step, 0xDA7A)
            idx = rng.choice(len(self.pairs), size=self.batch_size * self.world_size, p=self.probs)
            self._step_cache = (step, idx)
        return self._step_cache[1]

    def __getitem__(self, k: int) -> Dict[str, object]:
        import torch
        step, j = divmod(int(k), self.batch_size)
        slot = self.rank * self.batch_size + j
        ref = self.pairs[int(self.indices_for_step(step)[slot])]
        rng = seed_for(self.seed, step, slot, 0xC809)
        raw = load_raw(ref)
        c = self.crop
        H, W = raw.color.shape[:2]
        y = int(rng.integers(0, max(H - c, 0) + 1))
        x = int(rng.integers(0, max(W - c, 0) + 1))
        # crop first (the hole fill then costs a crop's worth, not a frame's)
        rgb, d, v = to_training_arrays(crop_raw(raw, y, x, c, c), self.depth_range_m)
        if self.hflip and rng.random() < 0.5:
            rgb, d, v = rgb[:, :, ::-1], d[:, :, ::-1], v[:, :, ::-1]
        if self.vflip and rng.random() < 0.5:
            rgb, d, v = rgb[:, ::-1], d[:, ::-1], v[:, ::-1]
        if self.color_jitter:
            # its own generator, so runs without jitter draw exactly what they drew before
            rgb = jitter_color(rgb, self.color_jitter, seed_for(self.seed, step, slot, 0x717))
        return {"rgb": torch.from_numpy(np.ascontiguousarray(rgb)),
                "depth": torch.from_numpy(np.ascontiguousarray(d)),
                "valid": torch.from_numpy(np.ascontiguousarray(v)),
                "step": step, "source": ref.source, "image": ref.image_id}


def jitter_color(rgb: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation each scaled by a factor in [1 - s, 1 + s], in a random
    order, on 3xHxW colour in [0, 1]. Depth is never touched: its values are measurements."""
    out = np.asarray(rgb, np.float32)
    for op in rng.permutation(3):
        f = np.float32(rng.uniform(1.0 - strength, 1.0 + strength))
        if op == 0:
            out = out * f
        elif op == 1:
            out = (out - out.mean()) * f + out.mean()
        else:
            grey = (0.299 * out[0] + 0.587 * out[1] + 0.114 * out[2])[None]
            out = (out - grey) * f + grey
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def pad_to_multiple(arrs, multiple: int = 64, min_size: int = 128):
    """Replicate-pad CxHxW arrays bottom/right to a multiple of ``multiple`` (>= min_size)."""
    H, W = arrs[0].shape[1:]
    h = max(min_size, -(-H // multiple) * multiple)
    w = max(min_size, -(-W // multiple) * multiple)
    out, keep = _pad_to(arrs, h, w)
    return out, keep


class ValFrames:
    """Validation items: centre crops (``mode='center'``) or full frames padded to x64 (``'full'``).

    Full frames carry ``hw`` (the original size); outputs are cropped back before measuring,
    and padded depth pixels are marked invalid.
    """

    def __init__(self, pairs: List[PairRef], depth_range_m: float, mode: str = "center",
                 crop: int = 256):
        if mode not in ("center", "full"):
            raise DatasetError(f"validation mode must be 'center' or 'full', got {mode!r}")
        self.pairs, self.depth_range_m, self.mode, self.crop = pairs, float(depth_range_m), mode, crop

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> Dict[str, object]:
        import torch
        ref = self.pairs[i]
        raw = load_raw(ref)
        H, W = raw.color.shape[:2]
        if self.mode == "center":
            c = self.crop
            y, x = max(H - c, 0) // 2, max(W - c, 0) // 2
            rgb, d, v = to_training_arrays(crop_raw(raw, y, x, c, c), self.depth_range_m)
            hw = (min(c, H), min(c, W))
        else:
            rgb, d, v = to_training_arrays(raw, self.depth_range_m)
            (rgb, d, v), keep = pad_to_multiple([rgb, d, v])
            if keep is not None:
                v = v * keep
            hw = (H, W)
        return {"rgb": torch.from_numpy(np.ascontiguousarray(rgb)),
                "depth": torch.from_numpy(np.ascontiguousarray(d)),
                "valid": torch.from_numpy(np.ascontiguousarray(v)),
                "hw": torch.tensor(hw), "source": ref.source, "image": ref.image_id}


def evenly_spaced(pairs: List[PairRef], limit: Optional[int]) -> List[PairRef]:
    """At most ``limit`` pairs per source, evenly spaced through each source (near-duplicates)."""
    if not limit or limit <= 0:
        return list(pairs)
    by_src: Dict[str, List[PairRef]] = {}
    for p in pairs:
        by_src.setdefault(p.source, []).append(p)
    out: List[PairRef] = []
    for ps in by_src.values():
        if len(ps) <= limit:
            out.extend(ps)
        else:
            idx = np.linspace(0, len(ps) - 1, limit).round().astype(int)
            out.extend(ps[i] for i in sorted(set(idx.tolist())))
    return out
