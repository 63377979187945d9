"""The one reader of the dataset-folder format (rgbd_codec_ros.dataset_folder): every real source
folder reads through it, and every kind of bad folder gives a DatasetError that says what to fix."""
from __future__ import annotations

import csv
import json

import imagecodecs
import numpy as np
import pytest

from conftest import DATA_DIR
from rgbd_codec_ros.codec.base import CodecError
from rgbd_codec_ros.dataset_folder import (
    DatasetError, DatasetFolder, PairFiles, is_dataset_folder, list_pairs, read_color, read_depth,
    read_pair)


def _real_source_folders():
    """Whatever source folders the shared data holds (not a pinned list); a skip without the data."""
    found = sorted(p for p in DATA_DIR.iterdir() if is_dataset_folder(p)) if DATA_DIR.is_dir() else []
    if not found:
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"no shared data at {DATA_DIR}"))]
    return [pytest.param(p, id=p.name) for p in found]


@pytest.mark.parametrize("folder", _real_source_folders())
def test_every_real_source_reads_through_the_reader(folder):
    source = DatasetFolder(folder)
    meta = json.loads((folder / "meta.json").read_text()) if (folder / "meta.json").is_file() else {}
    assert source.depth_scale_per_m == float(meta.get("depth_scale_per_m", 1000.0)) > 0
    if "num_pairs" in meta:
        assert len(source) == meta["num_pairs"]
    if (folder / "index.csv").is_file():                  # the pairs are index.csv's rows, in order
        with (folder / "index.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))
        assert [p.id for p in source.pairs] == [r["id"] for r in rows]
        assert [p.color for p in source.pairs] == [folder / r["color"] for r in rows]
        assert [p.depth for p in source.pairs] == [folder / r["depth"] for r in rows]
    for index in (0, len(source) - 1):
        color, depth = source.read(index)
        assert color.dtype == np.uint8 and color.ndim in (2, 3) and color.shape[2:] in ((), (3,))
        assert depth.dtype == np.uint16 and depth.shape == color.shape[:2]
        assert (depth > 0).any(), "a real depth frame measures something"
    h, w = depth.shape
    if source.camera_matrix is not None:                 # meta.json's calibration, for this size
        k = source.camera_matrix
        assert k.shape == (3, 3) and k[0, 0] > 0 and k[1, 1] > 0
        assert 0 < k[0, 2] < w and 0 < k[1, 2] < h and list(k[2]) == [0, 0, 1]
    else:
        assert not {"intrinsics", "intrinsics_depth"} & set(meta)


# ---------------------------------------------------------------------------- small folders

def make_folder(root, n=3, h=12, w=16, index=None, meta=None, grey=False):
    """A folder of ``n`` pairs f0..; colour pixel (0,0) holds the pair's number, depth = 1000 + it."""
    (root / "color").mkdir(parents=True)
    (root / "depth").mkdir()
    for i in range(n):
        color = np.full((h, w) if grey else (h, w, 3), 40 + i, np.uint8)
        (root / "color" / f"f{i}.png").write_bytes(imagecodecs.png_encode(color))
        (root / "depth" / f"f{i}.png").write_bytes(
            imagecodecs.png_encode(np.full((h, w), 1000 + i, np.uint16)))
    if index is not None:
        (root / "index.csv").write_text(index)
    if meta is not None:
        (root / "meta.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
    return root


def test_index_csv_gives_order_and_pairing_and_meta_json_the_units(tmp_path):
    folder = make_folder(tmp_path / "a", index="id,color,depth,orig_color_path\n"
                         "second,color/f2.png,depth/f0.png,x\n\nfirst,color/f0.png,depth/f2.png,y\n",
                         meta={"depth_scale_per_m": 5000,
                               "intrinsics": [[500, 0, 7.5], [0, 510, 5.5], [0, 0, 1]]})
    source = DatasetFolder(folder)
    assert [p.id for p in source.pairs] == ["second", "first"]      # not the file names' order
    color, depth = source.read(0)
    assert color[0, 0, 0] == 42 and depth[0, 0] == 1000              # f2's colour with f0's depth
    assert source.depth_scale_per_m == 5000.0
    np.testing.assert_array_equal(source.camera_matrix, [[500, 0, 7.5], [0, 510, 5.5], [0, 0, 1]])
    assert DatasetFolder(folder, depth_scale_per_m=250).depth_scale_per_m == 250.0   # an override
    # without index.csv: paired by stem, in stem order, millimetres, no calibration
    plain = DatasetFolder(make_folder(tmp_path / "b"))
    assert [p.id for p in plain.pairs] == ["f0", "f1", "f2"]
    assert plain.depth_scale_per_m == 1000.0 and plain.camera_matrix is None
    assert [int(plain.read(i)[1][0, 0]) for i in range(3)] == [1000, 1001, 1002]


def test_grey_stays_grey_and_alpha_is_dropped(tmp_path):
    grey = np.arange(12 * 16, dtype=np.uint8).reshape(12, 16)
    rgb = np.stack([grey, grey // 2, 255 - grey], -1)
    cases = {
        "grey.png": (imagecodecs.png_encode(grey), grey),
        "grey_alpha.png": (imagecodecs.png_encode(np.stack([grey, np.full_like(grey, 9)], -1)), grey),
        "rgba.png": (imagecodecs.png_encode(np.dstack([rgb, np.full_like(grey, 9)])), rgb),
        "rgb.png": (imagecodecs.png_encode(rgb), rgb),
    }
    for name, (data, expected) in cases.items():
        (tmp_path / name).write_bytes(data)
        got = read_color(tmp_path / name)
        assert got.dtype == np.uint8 and got.flags.c_contiguous
        np.testing.assert_array_equal(got, expected, err_msg=name)
    (tmp_path / "grey.jpg").write_bytes(imagecodecs.jpeg8_encode(grey, level=95))
    assert read_color(tmp_path / "grey.jpg").shape == (12, 16)
    # a grey folder reads grey; training (which codes three channels) repeats the channel itself
    from rgbd_codec_ros.training import datasets as ds
    folder = make_folder(tmp_path / "g", grey=True)
    color, _ = DatasetFolder(folder).read(1)
    assert color.shape == (12, 16) and color[0, 0] == 41
    raw = ds.load_raw(ds.discover([str(folder)])[0].pairs[1])
    assert raw.color.shape == (12, 16, 3) and (raw.color == 41).all()


def test_one_error_type_for_every_reader():
    """The bag tool, the player and training catch the same class: a CodecError and a ValueError."""
    from rgbd_codec_ros.training import datasets as ds

    assert issubclass(DatasetError, CodecError) and issubclass(DatasetError, ValueError)
    assert ds.DatasetError is DatasetError


def _raises(match, fn, *args):
    with pytest.raises(DatasetError, match=match):
        fn(*args)


def test_missing_partner_image(tmp_path):
    folder = make_folder(tmp_path / "a")
    (folder / "depth" / "f1.png").unlink()
    _raises(r"1 image\(s\) without a partner \(f1.png\): each needs depth/f1.png", list_pairs, folder)
    folder = make_folder(tmp_path / "b")
    (folder / "color" / "f2.png").unlink()
    _raises(r"without a partner \(f2.png\): each needs color/f2.png", list_pairs, folder)
    folder = make_folder(tmp_path / "c")
    (folder / "color" / "f0.jpg").write_bytes(imagecodecs.jpeg8_encode(np.zeros((12, 16, 3), np.uint8)))
    _raises(r"f0.jpg and f0.png .* have the same id 'f0'", list_pairs, folder)
    _raises(r"does not exist", list_pairs, tmp_path / "nowhere")
    (tmp_path / "half" / "color").mkdir(parents=True)
    _raises(r"must hold color/ and depth/", list_pairs, tmp_path / "half")
    (tmp_path / "half" / "depth").mkdir()
    _raises(r"no colour image in color/", list_pairs, tmp_path / "half")


@pytest.mark.parametrize("index,message", [
    ("", r"index.csv is empty"),
    ("name,rgb,d\nf0,color/f0.png,depth/f0.png\n", r"lacks id, color, depth; the first line must name"),
    ("id,color,depth\n", r"lists no pairs"),
    ("id,color,depth\nf0,color/f0.png,depth/f0.png\nf1,color/f1.png\n",
     r"index.csv line 3: 2 fields where the header has 3"),
    ("id,color,depth\nf0,color/f0.png,\n", r"line 2: the depth field is empty"),
    ("id,color,depth\nf0,color/f0.png,depth/f0.png\nf0,color/f1.png,depth/f1.png\n",
     r"line 3: id 'f0' is also on line 2"),
    ("id,color,depth\nf0,color/f0.png,depth/f0.png\nf9,color/f9.png,depth/f9.png\n",
     r"line 3: the colour image color/f9.png does not exist in .*; fix the row or add the file"),
    ("id,color,depth\nf0,color/f0.png,depth/nope.png\n", r"the depth image depth/nope.png does not exist"),
    ("id,color,depth\n\"f0,color/f0.png\n", r"cannot read it as CSV|fields where the header has 3"),
])
def test_bad_index_csv(tmp_path, index, message):
    _raises(message, list_pairs, make_folder(tmp_path / "a", index=index))


@pytest.mark.parametrize("meta,message", [
    ("{not json", r"meta.json is not readable JSON .*; fix it or remove it"),
    ("[1000]", r"meta.json must hold a JSON object"),
    ({"depth_scale_per_m": 0}, r"depth_scale_per_m must be a number > 0 .* got 0"),
    ({"depth_scale_per_m": "mm"}, r"depth_scale_per_m must be a number > 0"),
    ({"depth_scale_per_m": True}, r"depth_scale_per_m must be a number > 0"),
    ({"intrinsics": [[500, 0, 8], [0, 500, 6]]}, r"intrinsics must be a 3x3 camera matrix"),
    ({"intrinsics_depth": [[0, 0, 8], [0, 500, 6], [0, 0, 1]]}, r"intrinsics_depth must be .* fx, fy > 0"),
    ({"intrinsics": "K.txt"}, r"intrinsics must be a 3x3 camera matrix"),
])
def test_bad_meta_json(tmp_path, meta, message):
    with pytest.raises(DatasetError, match=message):
        DatasetFolder(make_folder(tmp_path / "a", meta=meta))
    with pytest.raises(DatasetError, match="depth_scale_per_m must be a number > 0"):
        DatasetFolder(make_folder(tmp_path / "b"), depth_scale_per_m=-1)


def test_unreadable_images_and_size_mismatch(tmp_path):
    folder = make_folder(tmp_path / "a", n=1)
    pair = list_pairs(folder)[0]
    good_color = pair.color.read_bytes()
    pair.color.write_bytes(b"")
    _raises(r"the colour image .*f0.png is not a PNG or JPEG file \(it is empty\); replace it", read_pair, pair)
    pair.color.write_bytes(b"GIF89a not what we read")
    _raises(r"is not a PNG or JPEG file; replace it", read_pair, pair)
    pair.color.write_bytes(good_color[:60])
    _raises(r"the colour image .*f0.png is a damaged PNG \(.*\); replace it", read_pair, pair)
    pair.color.write_bytes(imagecodecs.png_encode(np.zeros((12, 16, 3), np.uint16)))
    _raises(r"is uint16; colour must be 8 bits per channel", read_pair, pair)
    pair.color.write_bytes(good_color)
    pair.depth.write_bytes(imagecodecs.jpeg8_encode(np.zeros((12, 16), np.uint8)))
    _raises(r"the depth image .*f0.png is not a PNG file", read_pair, pair)
    pair.depth.write_bytes(imagecodecs.png_encode(np.zeros((12, 16), np.uint8)))
    _raises(r"depth image .* is uint8 with one channel; depth must be a 16-bit single-channel PNG",
            read_pair, pair)
    pair.depth.write_bytes(imagecodecs.png_encode(np.zeros((12, 16, 3), np.uint16)))
    _raises(r"is uint16 with 3 channels; depth must be a 16-bit single-channel PNG", read_depth, pair.depth)
    pair.depth.write_bytes(imagecodecs.png_encode(np.zeros((6, 16), np.uint16)))
    _raises(r"pair 'f0': the colour f0.png is 16x12 but the depth f0.png is 16x6; a pair's images must "
            r"be the same size", read_pair, pair)
    _raises(r"cannot read the depth image .*missing.png", read_pair,
            PairFiles("x", pair.color, folder / "depth" / "missing.png"))
