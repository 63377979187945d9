"""`rgbd-codec info` on classical payloads: the header, the stream fields of a temporal (h264)
stream, and what a predicted frame needs; damaged payloads give a one-line error."""
from __future__ import annotations

import contextlib
import io

import numpy as np

from conftest import load_real_pairs
from rgbd_codec_ros.cli import main as cli_main
from rgbd_codec_ros.codec.base import RGBDFrame, create_backend


def run_cli(*args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli_main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def test_info_shows_keyframes_and_sequence_of_an_h264_stream(tmp_path, data_dir):
    pairs = load_real_pairs("realsense_d4xx_visp_rbt", 2)
    backend = create_backend("classical", color_codec="h264", color_quality=60)
    paths = []
    for i, (color, depth) in enumerate(pairs):
        path = tmp_path / f"frame{i}.rgbd"
        path.write_bytes(backend.encode(RGBDFrame(np.ascontiguousarray(color[::4, ::4]),
                                                   np.ascontiguousarray(depth[::4, ::4]))).payload)
        paths.append(path)
    rc, out, _ = run_cli("info", paths[0])
    assert rc == 0 and "classical codec payload, format 2" in out
    assert "color_codec: h264" in out and "sequence: 0" in out and "keyframe: True" in out
    rc, out, _ = run_cli("info", paths[1])
    assert rc == 0 and "sequence: 1" in out and "keyframe: False" in out and "predicted frame" in out
    # a predicted frame alone cannot be decoded: a clear error, no image written
    rc, _, err = run_cli("decode", paths[1], "--color-out", tmp_path / "c.png", "--depth-out", tmp_path / "d.png")
    assert rc != 0 and "keyframe" in err and not (tmp_path / "c.png").exists()
    damaged = bytearray(paths[0].read_bytes())
    damaged[30] ^= 0xFF
    (tmp_path / "bad.rgbd").write_bytes(bytes(damaged))
    rc, _, err = run_cli("info", tmp_path / "bad.rgbd")
    assert rc != 0 and "corrupted" in err and len(err.strip().splitlines()) == 1


def test_info_reads_learned_payloads_of_the_old_and_the_current_format(tmp_path):
    """A recorded format-2 payload (magic RGBDL) and the same frame as format 3 (container
    framing, magic RDLN): info names each one's own format and passes both through the checks."""
    from pathlib import Path

    from rgbd_codec_ros.codec.learned import bitstream as bs

    old_path = Path(__file__).resolve().parent / "data" / "learned_v2_tiny.rgbd"
    new_path = tmp_path / "v3.rgbd"
    new_path.write_bytes(bs.pack(*bs.unpack(old_path.read_bytes())))
    for path, version in ((old_path, 2), (new_path, 3)):
        rc, out, err = run_cli("info", path)
        assert rc == 0, err
        assert f"learned codec payload, format {version}, {path.stat().st_size} bytes" in out
        assert "model_id: tiny-test@" in out and "section far_depth: 165 bytes" in out
        assert "header checks: pass" in out
    damaged = bytearray(new_path.read_bytes())
    damaged[-1] ^= 0xFF
    (tmp_path / "bad.rgbd").write_bytes(bytes(damaged))
    rc, _, err = run_cli("info", tmp_path / "bad.rgbd")
    assert rc != 0 and "section far_depth is corrupted" in err and len(err.strip().splitlines()) == 1
