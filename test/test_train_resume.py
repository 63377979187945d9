"""`rgbd-codec train`: exact resume, schedule, logs, checkpoints, export, argument errors.

Tiny model, 128 crops of real pairs, one thread: a few seconds per run.
"""
from __future__ import annotations

import csv
import os

import pytest
import torch

from rgbd_codec_ros.cli import main


torch.set_num_threads(1)


@pytest.fixture(scope="module")
def base_args(data_dir):
    return ["train", "--data", str(data_dir / "osd_kinect_pcl_mosd"), str(data_dir / "realsense_d435_taeyoung"),
            "--val-source", "realsense_d435_taeyoung", "--preset", "tiny", "--steps", "4",
            "--batch-size", "2", "--crop", "128", "--threads", "1", "--log-every", "1",
            "--val-every", "2", "--val-limit", "1", "--checkpoint-every", "2",
            "--quality-sampling", "sample", "--seed", "7", "--no-progress"]


def _rows(path):
    with open(path, newline="") as fh:
        return [{k: v for k, v in r.items() if k != "time"} for r in csv.DictReader(fh)]


def _ckpt(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _assert_same_opt(a, b):
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        for k in a["state"][i]:
            assert torch.equal(torch.as_tensor(a["state"][i][k]), torch.as_tensor(b["state"][i][k]))


@pytest.mark.slow
def test_exact_resume(tmp_path, base_args):
    a, b = tmp_path / "a", tmp_path / "b"
    export = tmp_path / "tiny.pt"
    assert main(base_args + ["--checkpoint-dir", str(a)]) == 0
    assert main(base_args + ["--checkpoint-dir", str(b), "--stop-at", "2"]) == 0
    assert sorted(os.listdir(b)) == ["latest", "step_00000002.pt", "train_log.csv", "val_log.csv"]
    assert main(base_args + ["--checkpoint-dir", str(b), "--resume", "--export", str(export)]) == 0

    rows_a, rows_b = _rows(a / "train_log.csv"), _rows(b / "train_log.csv")
    assert [r["step"] for r in rows_a] == ["0", "1", "2", "3"]
    assert rows_a == rows_b                                   # identical losses, rates, lr ...
    assert _rows(a / "val_log.csv") == _rows(b / "val_log.csv")
    assert [float(r["lr"]) for r in rows_a] == pytest.approx([1e-4, 1e-4, 1e-4, 1e-5])  # x0.1 at 75 %
    assert all(float(r["loss"]) > 0 for r in rows_a)
    assert {r["quality"] for r in rows_a} == {"mixed"}
    assert len(_rows(a / "val_log.csv")) == 2 * 4           # 2 validations x 4 qualities

    fa, fb = _ckpt(a / "step_00000004.pt"), _ckpt(b / "step_00000004.pt")
    assert fa["step"] == fb["step"] == 4
    _assert_same_state(fa["model"], fb["model"])              # identical weights
    _assert_same_opt(fa["opt"], fb["opt"])
    _assert_same_opt(fa["aux_opt"], fb["aux_opt"])
    _assert_same_state(_ckpt(a / "step_00000002.pt")["model"], _ckpt(b / "step_00000002.pt")["model"])
    assert set(fa["rng"][0]) >= {"python", "numpy", "torch"}
    assert fa["schedule"]["milestones"] == [0.75, 0.9]
    # training changed the weights
    mid = _ckpt(a / "step_00000002.pt")["model"]
    assert any(not torch.equal(mid[k], fa["model"][k]) for k in mid)

    from rgbd_codec_ros.codec.learned.weights_io import load_model
    model, meta = load_model(str(export))
    assert meta["trained_steps"] == 4 and meta["preset"]["name"] == "tiny"
    assert [d["name"] for d in meta["training_data"]] == ["osd_kinect_pcl_mosd"]
    assert "license_repo" in meta["training_data"][0]
    assert meta["validation_data"][0]["name"] == "realsense_d435_taeyoung"


@pytest.mark.slow
def test_resume_refuses_another_model(tmp_path, base_args, capsys):
    d = tmp_path / "c"
    assert main(base_args + ["--checkpoint-dir", str(d), "--stop-at", "1", "--val-every", "100"]) == 0
    capsys.readouterr()
    args = [x if x != "tiny" else "lite" for x in base_args]
    assert main(args + ["--checkpoint-dir", str(d), "--resume"]) == 2
    assert "trained with --preset tiny" in capsys.readouterr().err


@pytest.mark.slow
def test_init_weights_fine_tunes_finished_weights(tmp_path, base_args, trained_tiny_weights, capsys):
    """--init-weights starts from a finished model (same first batch: a lower loss than from scratch),
    with the warm-up ramp, and refuses weights of another model."""
    scratch, tuned = tmp_path / "scratch", tmp_path / "tuned"
    assert main(base_args + ["--checkpoint-dir", str(scratch), "--val-every", "100"]) == 0
    assert main(base_args + ["--checkpoint-dir", str(tuned), "--val-every", "100", "--init-weights",
                             trained_tiny_weights, "--warmup-steps", "2"]) == 0
    assert "initialised from tiny" in capsys.readouterr().err
    rows_s, rows_t = _rows(scratch / "train_log.csv"), _rows(tuned / "train_log.csv")
    assert float(rows_t[0]["loss"]) < 0.5 * float(rows_s[0]["loss"])
    assert float(rows_t[0]["psnr_rgb"]) > float(rows_s[0]["psnr_rgb"]) + 3
    assert [float(r["lr"]) for r in rows_t] == pytest.approx([1e-4 / 3, 2e-4 / 3, 1e-4, 1e-5])
    # a resume continues the checkpoint, not the initial weights
    assert main(base_args + ["--checkpoint-dir", str(tuned), "--resume", "--steps", "5", "--init-weights",
                             trained_tiny_weights, "--warmup-steps", "2"]) == 0
    assert [r["step"] for r in _rows(tuned / "train_log.csv")] == ["0", "1", "2", "3", "4"]
    capsys.readouterr()
    assert main(base_args + ["--checkpoint-dir", str(tmp_path / "sep"), "--variant", "separate",
                             "--init-weights", trained_tiny_weights]) == 2
    assert "does not fit --preset tiny --variant separate" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--init-weights", "/nonexistent/w.pt"], "no such weights file"),
    (["--crop", "100"], "multiple of 64"),
    (["--resume", "/nonexistent/ckpt.pt"], "no such checkpoint"),
    (["--qualities", "9"], "index must be"),
    (["--val-source", "nothing_like_this"], "matches no source"),
    (["--data", "/nonexistent/dir"], "does not exist"),
])
def test_bad_arguments_exit_nonzero_with_a_message(tmp_path, base_args, capsys, extra, message):
    assert main(base_args + ["--checkpoint-dir", str(tmp_path / "x")] + extra) == 2
    err = capsys.readouterr().err
    assert "rgbd-codec train: error:" in err and message in err
