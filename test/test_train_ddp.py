"""Two-process data-parallel training with torchrun (gloo on CPU): both ranks end identical."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # two torchrun ranks train

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import os, sys, torch
    from rgbd_codec_ros.training.trainer import Trainer, TrainConfig
    out, ckpt, data = sys.argv[1], sys.argv[2], sys.argv[3:]
    cfg = TrainConfig(data=data, preset="tiny", steps=3, batch_size=1, crop=128, threads=1,
                      progress=False, checkpoint_dir=ckpt, checkpoint_every=100, log_every=1,
                      val_every=100, seed=5)
    t = Trainer(cfg)
    assert t.world == 2 and torch.distributed.get_backend() == "gloo"
    start = {k: v.clone() for k, v in t.model.state_dict().items()}
    first_batch = next(iter(t._loader()))["rgb"]
    t.fit()
    torch.save({"start": start, "end": t.model.state_dict(), "batch": first_batch},
               os.path.join(out, f"rank{t.rank}.pt"))
    t.close()
""")


def test_two_ranks_train_in_lockstep(tmp_path, data_dir):
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(tmp_path), str(tmp_path / "ckpt"),
           str(data_dir / "osd_kinect_pcl_mosd"), str(data_dir / "realsense_d435_taeyoung")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    assert not torch.equal(r0["batch"], r1["batch"])              # each rank saw its own data
    changed = 0
    for k in r0["end"]:
        assert torch.equal(r0["start"][k], r1["start"][k]), k     # same start (broadcast)
        assert torch.equal(r0["end"][k], r1["end"][k]), k         # same weights after 3 steps
        changed += int(not torch.equal(r0["start"][k], r0["end"][k]))
    assert changed > 10
    ckpt = torch.load(tmp_path / "ckpt" / "step_00000003.pt", weights_only=False)
    assert ckpt["config"]["world_size"] == 2 and len(ckpt["rng"]) == 2
    for k in r0["end"]:
        assert torch.equal(ckpt["model"][k], r0["end"][k])
    with open(tmp_path / "ckpt" / "train_log.csv") as fh:
        assert len(fh.read().strip().splitlines()) == 1 + 3
