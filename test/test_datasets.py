"""Dataset discovery and loading: the shared folder layout, NYU .mat, TUM, SUN RGB-D, crops."""
from __future__ import annotations

import json

import imagecodecs
import numpy as np
import pytest
import torch

from rgbd_codec_ros.training import datasets as ds

torch.set_num_threads(1)
RANGE_M = 10.0


def coded_scene(h, w):
    """Colour that encodes pixel coordinates and a depth (mm) that is a function of them."""
    yy, xx = np.mgrid[0:h, 0:w]
    color = np.stack([xx % 256, yy % 256, xx // 256], -1).astype(np.uint8)
    depth = (1000 + 3 * xx + 2 * yy).astype(np.uint16)
    depth[(xx + yy) % 7 == 0] = 0          # holes
    return color, depth


def expected_depth_from_colour(rgb):
    """Depth in metres implied by a (cropped, flipped) coded colour tensor 3xHxW in [0,1]."""
    c = np.rint(rgb.numpy() * 255).astype(np.int64)
    x = c[0] + 256 * c[2]
    y = c[1]
    return (1000 + 3 * x + 2 * y) / 1000.0, (x + y) % 7 != 0


def write_folder(root, name, n=3, h=200, w=320, scale=1000, jpeg=False):
    d = root / name
    (d / "color").mkdir(parents=True)
    (d / "depth").mkdir()
    color, depth = coded_scene(h, w)
    for i in range(n):
        if jpeg:
            (d / "color" / f"f{i}.jpg").write_bytes(imagecodecs.jpeg8_encode(color, level=95))
        else:
            (d / "color" / f"f{i}.png").write_bytes(imagecodecs.png_encode(color))
        (d / "depth" / f"f{i}.png").write_bytes(imagecodecs.png_encode(
            (depth.astype(np.int64) * scale // 1000).astype(np.uint16)))
    (d / "meta.json").write_text(json.dumps({"depth_scale_per_m": scale, "dataset": "fixture"}))
    return d


# ----------------------------------------------------------------------------- folder
def test_folder_source_units_masks_and_joint_crops(tmp_path):
    write_folder(tmp_path, "a", n=2, scale=1000)
    write_folder(tmp_path, "b", n=2, scale=10000)
    sources = ds.discover([str(tmp_path)])
    assert [s.name for s in sources] == ["a", "b"]
    assert [len(s.pairs) for s in sources] == [2, 2]
    color, depth = coded_scene(200, 320)
    for s in sources:
        raw = ds.load_raw(s.pairs[0])
        assert raw.color.dtype == np.uint8 and raw.color.shape == (200, 320, 3)
        np.testing.assert_array_equal(raw.color, color)
        m, valid = raw.depth_metres()
        np.testing.assert_array_equal(valid, depth != 0)
        np.testing.assert_allclose(m[valid], depth[valid] / 1000.0, rtol=1e-6)

    pairs, probs = ds.pair_weights(sources, {})
    data = ds.TrainCrops(pairs, probs, crop=128, batch_size=4, depth_range_m=RANGE_M, seed=3)
    flipped = 0
    for k in range(8):
        item = data[k]
        rgb, d, v = item["rgb"], item["depth"], item["valid"]
        assert rgb.shape == (3, 128, 128) and d.shape == (1, 128, 128) and v.shape == (1, 128, 128)
        metres, expect_valid = expected_depth_from_colour(rgb)
        np.testing.assert_array_equal(v[0].numpy() > 0, expect_valid)
        # the colour and depth crops come from the same window and flip
        np.testing.assert_allclose(d[0].numpy()[expect_valid], metres[expect_valid] / RANGE_M, atol=1e-6)
        # holes are filled (smoothly, inside the valid range), not left at 0
        assert float(d[0][~torch.from_numpy(expect_valid)].min()) > 0.05
        x = rgb[0, 0] * 255 + 256 * rgb[2, 0] * 255
        flipped += int(x[1] < x[0])
    assert 0 < flipped < 8            # random horizontal flips happen, not always
    # reproducible: the same (seed, step, slot) gives the same sample
    assert torch.equal(data[5]["rgb"], ds.TrainCrops(pairs, probs, 128, 4, RANGE_M, seed=3)[5]["rgb"])
    assert not torch.equal(data[5]["rgb"], ds.TrainCrops(pairs, probs, 128, 4, RANGE_M, seed=4)[5]["rgb"])


def test_ranks_take_disjoint_slots_of_one_global_batch(tmp_path):
    write_folder(tmp_path, "a", n=3)
    pairs, probs = ds.pair_weights(ds.discover([str(tmp_path / "a")]), {})
    r0 = ds.TrainCrops(pairs, probs, 128, 2, RANGE_M, seed=1, rank=0, world_size=2)
    r1 = ds.TrainCrops(pairs, probs, 128, 2, RANGE_M, seed=1, rank=1, world_size=2)
    one = ds.TrainCrops(pairs, probs, 128, 4, RANGE_M, seed=1, rank=0, world_size=1)
    # rank 1's first sample of step 0 is global slot 2
    assert torch.equal(r1[0]["rgb"], one[2]["rgb"])
    assert torch.equal(r0[1]["rgb"], one[1]["rgb"])


def test_batches_do_not_depend_on_loader_workers(tmp_path):
    write_folder(tmp_path, "a", n=3)
    pairs, probs = ds.pair_weights(ds.discover([str(tmp_path / "a")]), {})
    data = ds.TrainCrops(pairs, probs, 128, 2, RANGE_M, seed=9)

    def batches(workers):
        loader = torch.utils.data.DataLoader(data, batch_size=2, sampler=range(2, 8), num_workers=workers)
        return [b["rgb"] for b in loader]

    for a, b in zip(batches(0), batches(2)):
        assert torch.equal(a, b)


def test_val_split_weights_and_limits(tmp_path):
    write_folder(tmp_path, "kinect", n=4)
    write_folder(tmp_path, "f200_x", n=2)
    write_folder(tmp_path, "f200_y", n=2)
    sources = ds.discover([str(tmp_path)])
    train, val = ds.split_sources(sources, ["kinect"])
    assert [s.name for s in train] == ["f200_x", "f200_y"] and [s.name for s in val] == ["kinect"]
    with pytest.raises(ds.DatasetError, match="matches no source"):
        ds.split_sources(sources, ["nope"])
    with pytest.raises(ds.DatasetError, match="no training source"):
        ds.split_sources(sources, ["*"])
    w = ds.parse_source_weights(["f200_*=0.5"])
    pairs, probs = ds.pair_weights(sources, w)
    by_src = {}
    for p, q in zip(pairs, probs):
        by_src[p.source] = by_src.get(p.source, 0) + q
    assert by_src["kinect"] == pytest.approx(4 / 6)
    assert by_src["f200_x"] == pytest.approx(1 / 6)
    pairs0, probs0 = ds.pair_weights(sources, ds.parse_source_weights(["f200_*=0"]))
    assert sum(q for p, q in zip(pairs0, probs0) if p.source == "kinect") == pytest.approx(1.0)
    for bad in (["x"], ["x=-1"], ["x=abc"]):
        with pytest.raises(ds.DatasetError):
            ds.parse_source_weights(bad)
    lim = ds.evenly_spaced([p for s in sources for p in s.pairs], 2)
    assert [p.image_id for p in lim if p.source == "kinect"] == ["f0", "f3"]


def test_validation_frames_centre_and_full(tmp_path):
    write_folder(tmp_path, "a", n=1, h=200, w=330)
    pairs = ds.discover([str(tmp_path / "a")])[0].pairs
    c = ds.ValFrames(pairs, RANGE_M, "center", 128)[0]
    assert c["rgb"].shape == (3, 128, 128)
    x = np.rint(c["rgb"][0].numpy() * 255) + 256 * np.rint(c["rgb"][2].numpy() * 255)
    assert x[0, 0] == (330 - 128) // 2                      # centred window
    f = ds.ValFrames(pairs, RANGE_M, "full")[0]
    assert f["rgb"].shape == (3, 256, 384)                    # padded to x64
    assert tuple(f["hw"].tolist()) == (200, 330)
    assert float(f["valid"][:, 200:].sum()) == 0 and float(f["valid"][:, :, 330:].sum()) == 0
    # replicate padding of colour
    assert torch.equal(f["rgb"][:, 255, :330], f["rgb"][:, 199, :330])


# ----------------------------------------------------------------------------- NYU
def test_nyu_mat_transposed_layout(tmp_path):
    h5py = pytest.importorskip("h5py")
    n, H, W = 2, 48, 64
    rng = np.random.default_rng(0)
    colors = rng.integers(0, 256, (n, H, W, 3), dtype=np.uint8)
    depths = rng.uniform(0.5, 9.0, (n, H, W)).astype(np.float32)
    depths[0, 3, 5] = 0.0
    depths[1, 10, 20] = np.nan
    path = tmp_path / "nyu_depth_v2_labeled.mat"
    with h5py.File(path, "w") as f:       # MATLAB v7.3: axes reversed w.r.t. MATLAB's H x W x C x N
        f["images"] = np.transpose(colors, (0, 3, 2, 1))   # (N, 3, W, H)
        f["depths"] = np.transpose(depths, (0, 2, 1))       # (N, W, H)
    sources = ds.discover([str(path)])
    assert sources[0].kind == "nyu" and len(sources[0].pairs) == n
    for i in range(n):
        raw = ds.load_raw(sources[0].pairs[i])
        np.testing.assert_array_equal(raw.color, colors[i])
        m, valid = raw.depth_metres()
        assert raw.depth.dtype == np.float32 and raw.depth_scale_per_m == 1.0
        assert valid.sum() == H * W - 1
        np.testing.assert_allclose(m[valid], depths[i][valid])
    assert not ds.load_raw(sources[0].pairs[0]).depth_metres()[1][3, 5]
    assert not ds.load_raw(sources[0].pairs[1]).depth_metres()[1][10, 20]
    bad = tmp_path / "other.mat"
    with h5py.File(bad, "w") as f:
        f["foo"] = np.zeros(3)
    with pytest.raises(ds.DatasetError, match="images"):
        ds.discover([str(bad)])


# ----------------------------------------------------------------------------- TUM
def test_tum_association_and_units(tmp_path):
    seq = tmp_path / "rgbd_dataset_freiburg1_xyz"
    (seq / "rgb").mkdir(parents=True)
    (seq / "depth").mkdir()
    rgb_t = [100.000, 100.033, 100.066, 100.100, 100.500]
    dep_t = [100.004, 100.031, 100.090, 100.095, 100.300]
    for i, t in enumerate(rgb_t):
        img = np.full((24, 32, 3), i * 40, np.uint8)
        (seq / "rgb" / f"{t:.6f}.png").write_bytes(imagecodecs.png_encode(img))
    for j, t in enumerate(dep_t):
        d = np.full((24, 32), 5000 + 1000 * j, np.uint16)     # 5000 units per metre
        d[0, 0] = 0
        (seq / "depth" / f"{t:.6f}.png").write_bytes(imagecodecs.png_encode(d))
    (seq / "rgb.txt").write_text("# color images\n# file: 'x.bag'\n# timestamp filename\n" + "".join(
        f"{t:.6f} rgb/{t:.6f}.png\n" for t in rgb_t))
    (seq / "depth.txt").write_text("# depth maps\n# timestamp filename\n" + "".join(
        f"{t:.6f} depth/{t:.6f}.png\n" for t in dep_t))
    src = ds.discover([str(seq)])[0]
    assert src.kind == "tum"
    got = [(p.color.rsplit("/", 1)[1][:-4], p.depth.rsplit("/", 1)[1][:-4]) for p in src.pairs]
    # 100.066 has no depth within 20 ms (100.090 is 24 ms away); 100.100 takes 100.095 (5 ms);
    # 100.500 has nothing near; 100.300 stays unused
    assert got == [("100.000000", "100.004000"), ("100.033000", "100.031000"),
                   ("100.100000", "100.095000")]
    raw = ds.load_raw(src.pairs[2])
    m, valid = raw.depth_metres()
    assert not valid[0, 0] and valid.sum() == 24 * 32 - 1
    np.testing.assert_allclose(m[valid], (5000 + 3000) / 5000.0)   # depth frame 3 -> 1.6 m
    assert ds.associate_timestamps([0.0, 0.01], [0.009]) == [(1, 0)]  # each frame used once
    assert ds.associate_timestamps([0.0], [0.5], max_dt=0.02) == []


# ----------------------------------------------------------------------------- SUN
def test_sun_rotated_depth_and_sources(tmp_path):
    root = tmp_path / "SUNRGBD"
    mm_values = {"kv1/NYUdata/NYU0001": 1234, "kv1/NYUdata/NYU0002": 2500,
                 "realsense/sh/2014_10_21-11_49_27-1311000073": 9000}
    for rel, mm in mm_values.items():
        scene = root / rel
        (scene / "image").mkdir(parents=True)
        (scene / "depth").mkdir()
        name = rel.rsplit("/", 1)[1]
        (scene / "image" / f"{name}.jpg").write_bytes(
            imagecodecs.jpeg8_encode(np.full((30, 40, 3), 128, np.uint8), level=90))
        stored = np.full((30, 40), ((mm << 3) | (mm >> 13)) & 0xFFFF, np.uint16)
        stored[1, 1] = 0
        (scene / "depth" / f"{name}.png").write_bytes(imagecodecs.png_encode(stored))
    assert ((1234 << 3) | (1234 >> 13)) & 0xFFFF == 9872
    assert ((9000 << 3) | (9000 >> 13)) & 0xFFFF == 6465
    sources = ds.discover([str(root)])
    assert [s.name for s in sources] == ["SUNRGBD/kv1", "SUNRGBD/realsense"]
    assert [len(s.pairs) for s in sources] == [2, 1]
    for s in sources:
        for p in s.pairs:
            raw = ds.load_raw(p)
            m, valid = raw.depth_metres()
            assert not valid[1, 1] and valid.sum() == 30 * 40 - 1
            np.testing.assert_allclose(m[valid], mm_values[p.image_id] / 1000.0)
    np.testing.assert_array_equal(ds.sun_depth_to_mm(np.array([9872, 6465], np.uint16)), [1234, 9000])


# ----------------------------------------------------------------------------- real data, errors
def test_real_shared_data(data_dir):
    sources = ds.discover([str(data_dir)])
    counts = {s.name: len(s.pairs) for s in sources}
    # the data's own manifest says which sources it holds and how many pairs each: the test
    # follows the data as it grows (four sources were added after the first sessions)
    import re
    manifest = (data_dir / "MANIFEST.md").read_text()
    listed = {m.group(1): int(m.group(2)) for m in re.finditer(r"^\| `([\w.-]+)` \| (\d+) \|", manifest, re.M)}
    assert len(listed) >= 9 and counts == listed
    for name, size in (("iphone_lidar_imagereloc", (256, 192)), ("iphone_arkit_tsdf_frames", (960, 720))):
        portrait = ds.load_raw(next(s for s in sources if s.name == name).pairs[0])
        assert portrait.color.shape[:2] == size and portrait.depth.shape == size
    apc = next(s for s in sources if s.name == "realsense_f200_apc")
    assert apc.pairs[0].depth_scale_per_m == 10000
    raw = ds.load_raw(apc.pairs[0])
    m, valid = raw.depth_metres()
    assert raw.color.shape == (480, 640, 3)
    assert 0.4 < 1 - valid.mean() < 0.9                 # sparse F200 depth
    assert 0.1 < np.median(m[valid]) < 2.0             # a shelf at arm's length, in metres
    kin = next(s for s in sources if s.name == "7scenes_kinect1")
    raw = ds.load_raw(kin.pairs[0])                     # JPEG colour
    assert raw.color.shape == (480, 640, 3) and raw.depth.dtype == np.uint16


def test_bad_paths_say_what_to_fix(tmp_path):
    with pytest.raises(ds.DatasetError, match="does not exist"):
        ds.discover([str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ds.DatasetError, match="unrecognised layout"):
        ds.discover([str(tmp_path / "empty")])
    d = write_folder(tmp_path, "eight_bit", n=1)
    (d / "depth" / "f0.png").write_bytes(imagecodecs.png_encode(np.zeros((200, 320), np.uint8)))
    with pytest.raises(ds.DatasetError, match="16-bit"):
        ds.load_raw(ds.discover([str(d)])[0].pairs[0])
    with pytest.raises(ds.DatasetError, match="no data given"):
        ds.discover([])


def test_validation_is_a_contiguous_tail_of_every_source(data_dir):
    sources = ds.discover([str(data_dir)])
    train, val = ds.split_within_sources(sources, 0.1, gap=2)
    assert [s.name for s in val] == [s.name for s in sources]
    for s, t, v in zip(sources, train, val):
        n = len(s.pairs)
        k = max(1, round(0.1 * n))
        assert v.pairs == s.pairs[n - k:]                 # the last frames, in order
        assert t.pairs == s.pairs[:n - k - 2]              # the gap belongs to neither side
        assert not set(p.image_id for p in t.pairs) & set(p.image_id for p in v.pairs)
    with pytest.raises(ds.DatasetError, match="between 0 and 1"):
        ds.split_within_sources(sources, 1.0)
