"""Clobbering and faulty destinations (issue 9, items 7 and 9): an output is never an input,
``--force`` replaces only what the tool itself writes, outputs appear all or nothing, and a
read-only folder or a full disk is one line ``cannot write OUT: <reason>``, with no partial file.

A full disk is a real file-size limit (RLIMIT_FSIZE) on the CLI process: writes past it fail
with EFBIG exactly where a full disk fails with ENOSPC. A read-only folder is a chmod 0o555
folder, or, where the tests run as root (chmod does not stop root), a sysfs path.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from rgbd_codec_ros.bag.dataset import folder_to_bag
from rgbd_codec_ros.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]
TOPIC_ARGS = ["--color-topic", "/camera/color/image_raw", "--depth-topic", "/camera/depth/image_raw"]


def run_cli(*args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli_main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def run_sub(args, cwd: Path, fsize: int = None, **kw):
    """The CLI in its own process; ``fsize``: the largest file it may write (a full disk)."""
    def limits():
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "rgbd_codec_ros.cli", *map(str, args)],
                          cwd=str(cwd), env=env, capture_output=True, text=True,
                          preexec_fn=limits, timeout=300, **kw)


def digest(path: Path) -> str:
    """A hash of a file, or of every file under a folder (names and contents)."""
    h = hashlib.sha256()
    if path.is_file():
        h.update(path.read_bytes())
    else:
        for f in sorted(path.rglob("*")):
            h.update(str(f.relative_to(path)).encode())
            if f.is_file():
                h.update(f.read_bytes())
    return h.hexdigest()


def partials(folder: Path):
    return sorted(p.name for p in folder.iterdir() if ".partial" in p.name)


def one_error_line(stderr: str, prefix: str):
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("warning: ")]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith(prefix), stderr
    return lines[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory, data_dir):
    """A raw bag (.mcap, 4 real 160x120 pairs), its compressed form, and a real colour/depth
    PNG pair with its .rgbd (classical codec)."""
    d = tmp_path_factory.mktemp("hostile_cli")
    folder_to_bag(data_dir / "7scenes_kinect1", d / "raw.mcap", limit=4, start=20, downscale=4)
    rc, _, err = run_cli("bag", "compress", d / "raw.mcap", d / "comp.mcap", *TOPIC_ARGS,
                         "--drop-raw", "--no-progress")
    assert rc == 0, err
    src = data_dir / "7scenes_kinect1"
    name = sorted(p.name for p in (src / "color").iterdir())[3]
    (d / "c.png").write_bytes((src / "color" / name).read_bytes())
    (d / "d.png").write_bytes((src / "depth" / Path(name).with_suffix(".png").name).read_bytes())
    rc, _, err = run_cli("encode", "--codec", "classical", "--color", d / "c.png",
                         "--depth", d / "d.png", "--out", d / "pair.rgbd")
    assert rc == 0, err
    return d


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create files in: chmod 0o555, or for root a sysfs folder."""
    ro = tmp_path / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    for cand in (ro, Path("/sys"), Path("/sys/kernel"), Path("/proc")):
        try:
            fd, probe = tempfile.mkstemp(dir=cand)
        except OSError:
            return cand
        os.close(fd)
        os.unlink(probe)
    ro.chmod(0o755)
    pytest.skip("running as root and no unwritable folder found (chmod, /sys, /proc)")


# ---------------------------------------------------------------------------- never an input

def test_bag_output_is_never_an_input(work, tmp_path):
    d = work
    before = digest(d / "comp.mcap")
    rc, _, err = run_cli("bag", "decompress", d / "comp.mcap", d / "comp.mcap", "--force",
                         "--no-progress")
    assert rc == 2 and "is the input" in err
    assert digest(d / "comp.mcap") == before
    # the same file under another name: a symbolic link, and a hard link
    (tmp_path / "link.mcap").symlink_to(d / "comp.mcap")
    os.link(d / "comp.mcap", tmp_path / "hard.mcap")
    for other in ("link.mcap", "hard.mcap"):
        rc, _, err = run_cli("bag", "decompress", d / "comp.mcap", tmp_path / other, "--force",
                             "--no-progress")
        assert rc == 2 and "is the input" in err, err
    assert digest(d / "comp.mcap") == before
    # an output folder that holds the input, and an output inside the input bag folder
    box = tmp_path / "box"
    box.mkdir()
    (box / "in.mcap").write_bytes((d / "raw.mcap").read_bytes())
    (box / "notes.txt").write_text("mine")
    box_before = digest(box)
    rc, _, err = run_cli("bag", "compress", box / "in.mcap", box, *TOPIC_ARGS, "--force",
                         "--no-progress")
    assert rc == 2 and "holds the input" in err
    comp_before = digest(d)
    rc, _, err = run_cli("bag", "decompress", d / "comp.mcap", "--images", d, "--force",
                         "--no-progress")
    assert rc == 2 and "holds the input" in err
    assert digest(box) == box_before and digest(d) == comp_before
    rc, _, err = run_cli("bag", "compress", d / "raw.mcap", tmp_path / "bagdir", *TOPIC_ARGS,
                         "--no-progress")
    assert rc == 0, err
    rc, _, err = run_cli("bag", "decompress", tmp_path / "bagdir", tmp_path / "bagdir" / "x.mcap",
                         "--no-progress")
    assert rc == 2 and "inside the input folder" in err
    assert sorted(p.name for p in (tmp_path / "bagdir").iterdir()) == ["bagdir.mcap", "metadata.yaml"]


def test_force_replaces_only_what_the_tool_writes(work, tmp_path):
    d = work
    # an unrelated folder, and a folder that looks like a bag but holds other files
    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"\xff\xd8 not really")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "metadata.yaml").write_text("rosbag2_bagfile_information: {}\n")
    (mixed / "thesis.tex").write_text("years of work")
    for target in (other, mixed):
        before = digest(target)
        rc, _, err = run_cli("bag", "compress", d / "raw.mcap", target, *TOPIC_ARGS, "--force",
                             "--no-progress")
        assert rc == 2 and "is not a rosbag2 bag folder" in err and "--force replaces only" in err
        assert digest(target) == before
    # a symbolic link is not replaced (nor what it points at)
    (tmp_path / "elsewhere.mcap").write_bytes(b"keep")
    (tmp_path / "ln.mcap").symlink_to(tmp_path / "elsewhere.mcap")
    rc, _, err = run_cli("bag", "compress", d / "raw.mcap", tmp_path / "ln.mcap", *TOPIC_ARGS,
                         "--force", "--no-progress")
    assert rc == 2 and "symbolic link" in err
    assert (tmp_path / "elsewhere.mcap").read_bytes() == b"keep"
    # a bag folder the tool wrote is replaced (here mcap -> sqlite3)
    rc, _, err = run_cli("bag", "compress", d / "raw.mcap", tmp_path / "out", *TOPIC_ARGS,
                         "--no-progress")
    assert rc == 0, err
    rc, out, err = run_cli("bag", "compress", d / "raw.mcap", tmp_path / "out", *TOPIC_ARGS,
                           "--force", "--storage", "sqlite3", "--no-progress")
    assert rc == 0 and "(sqlite3)" in out, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metadata.yaml", "out.db3"]
    # --images: a dataset folder of someone else's is kept; an earlier --images output replaced
    data = tmp_path / "dataset"
    for sub in ("color", "depth"):
        (data / sub).mkdir(parents=True)
    (data / "color" / "0001.png").write_bytes((d / "c.png").read_bytes())
    (data / "depth" / "0001.png").write_bytes((d / "d.png").read_bytes())
    (data / "meta.json").write_text(json.dumps({"depth_scale_per_m": 1000}))
    before = digest(data)
    rc, _, err = run_cli("bag", "decompress", d / "comp.mcap", "--images", data, "--force",
                         "--no-progress")
    assert rc == 2 and "not a folder written by `bag decompress --images`" in err
    assert digest(data) == before
    rc, _, err = run_cli("bag", "decompress", d / "comp.mcap", "--images", tmp_path / "pngs",
                         "--no-progress")
    assert rc == 0, err
    rc, out, err = run_cli("bag", "decompress", d / "comp.mcap", "--images", tmp_path / "pngs",
                           "--force", "--no-progress")
    assert rc == 0 and "4 pairs decoded" in out, err
    assert partials(tmp_path) == []


def test_encode_and_decode_never_overwrite_their_inputs(work, tmp_path):
    d = work
    c_before, d_before, p_before = (digest(d / n) for n in ("c.png", "d.png", "pair.rgbd"))
    for out in ("c.png", "d.png"):
        rc, _, err = run_cli("encode", "--codec", "classical", "--color", d / "c.png",
                             "--depth", d / "d.png", "--out", d / out)
        assert rc == 2 and "is the input" in err
    rc, _, err = run_cli("decode", d / "pair.rgbd", "--color-out", d / "pair.rgbd",
                         "--depth-out", tmp_path / "d.png")
    assert rc == 2 and "is the input" in err
    rc, _, err = run_cli("decode", d / "pair.rgbd", "--color-out", tmp_path / "x.png",
                         "--depth-out", tmp_path / "x.png")
    assert rc == 2 and "same file" in err
    assert (digest(d / "c.png"), digest(d / "d.png"), digest(d / "pair.rgbd")) == \
        (c_before, d_before, p_before)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_decode_writes_both_images_or_neither(work, tmp_path):
    d = work
    # the depth cannot be written (no image format for the name; an unwritable folder)
    bad_depths = [tmp_path / "depth.nosuchformat", unwritable_folder(tmp_path) / "depth.png"]
    for bad in bad_depths:
        rc, _, err = run_cli("decode", d / "pair.rgbd", "--color-out", tmp_path / "color.png",
                             "--depth-out", bad)
        line = one_error_line(err, "rgbd-codec decode: error: cannot write ")
        assert rc == 2 and str(bad) in line
        assert not (tmp_path / "color.png").exists()
        assert partials(tmp_path) == []
    rc, out, err = run_cli("decode", d / "pair.rgbd", "--color-out", tmp_path / "color.png",
                           "--depth-out", tmp_path / "depth.png")
    assert rc == 0, err
    assert (tmp_path / "color.png").stat().st_mode & 0o777 == (tmp_path / "depth.png").stat().st_mode & 0o777
    assert (tmp_path / "color.png").stat().st_mode & 0o044     # not left private by mkstemp


# ---------------------------------------------------------------------------- faulty destinations

def test_read_only_destination_is_one_line(work, tmp_path, data_dir):
    d = work
    ro = unwritable_folder(tmp_path)
    cases = [
        ("bag", ["bag", "compress", d / "raw.mcap", ro / "out.mcap", *TOPIC_ARGS, "--no-progress"]),
        ("bag", ["bag", "compress", d / "raw.mcap", ro / "out", *TOPIC_ARGS, "--no-progress"]),
        ("bag", ["bag", "decompress", d / "comp.mcap", ro / "out.db3", "--no-progress"]),
        ("bag", ["bag", "decompress", d / "comp.mcap", "--images", ro / "pngs", "--no-progress"]),
        ("bag", ["bag", "from-images", data_dir / "7scenes_kinect1", ro / "out.mcap", "--limit",
                 "2", "--downscale", "4"]),
        ("encode", ["encode", "--codec", "classical", "--color", d / "c.png", "--depth", d / "d.png",
                    "--out", ro / "x.rgbd"]),
    ]
    for cmd, args in cases:
        out = next(a for a in args if str(a).startswith(str(ro)))
        r = run_sub(args, tmp_path)
        line = one_error_line(r.stderr, f"rgbd-codec {cmd}: error: cannot write {out}: ")
        assert r.returncode in (1, 2), r.stderr
        assert line.split(": ")[-1].strip(), line      # a reason is given
        assert not Path(out).exists()
    assert partials(tmp_path) == []


@pytest.mark.parametrize("args,out", [
    (["bag", "compress", "raw.mcap", "full.mcap", *TOPIC_ARGS, "--no-progress"], "full.mcap"),
    (["bag", "compress", "raw.mcap", "full.db3", *TOPIC_ARGS, "--no-progress"], "full.db3"),
    (["bag", "compress", "raw.mcap", "fulldir", *TOPIC_ARGS, "--no-progress"], "fulldir"),
    (["bag", "decompress", "comp.mcap", "--images", "fullpngs", "--no-progress"], "fullpngs"),
    (["encode", "--codec", "classical", "--color", "c.png", "--depth", "d.png", "--out",
      "full.rgbd"], "full.rgbd"),
    (["decode", "pair.rgbd", "--color-out", "full_c.png", "--depth-out", "full_d.png"],
     "full_c.png"),
])
def test_full_disk_is_one_line_and_leaves_nothing(work, args, out):
    """No file may grow past 30 kB (the outputs need 60-500 kB): EFBIG, as a full disk's
    ENOSPC, at whichever write it happens."""
    d = work
    before = sorted(p.name for p in d.iterdir())
    r = run_sub(args, d, fsize=30_000)
    cmd = "bag" if args[0] == "bag" else args[0]
    line = one_error_line(r.stderr, f"rgbd-codec {cmd}: error: cannot write ")
    assert r.returncode in (1, 2), r.stderr
    assert out in line or "full_d.png" in line
    assert sorted(p.name for p in d.iterdir()) == before      # no output, no temporary


# ---------------------------------------------------------------------------- interrupted runs

@pytest.fixture(scope="module")
def long_bag(tmp_path_factory, data_dir):
    """A compressed bag of 240 full-size real pairs with RVL depth (slower to decode than the
    JPEG XL default): decompressing it takes several seconds, so a signal sent after its output
    appears arrives mid-run (with fewer pairs or JPEG XL depth a run sometimes finished first)."""
    d = tmp_path_factory.mktemp("long")
    folder_to_bag(data_dir / "7scenes_kinect1", d / "raw.mcap", limit=240)
    rc, _, err = run_cli("bag", "compress", d / "raw.mcap", d / "comp.mcap", *TOPIC_ARGS,
                         "-O", "depth_codec=rvl", "--drop-raw", "--no-progress")
    assert rc == 0, err
    (d / "raw.mcap").unlink()
    return d / "comp.mcap"


def _start_decompress(bag: Path, folder: Path, out: str, images: bool):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    args = ["bag", "decompress", str(bag)] + (["--images", out] if images else [out])
    proc = subprocess.Popen([sys.executable, "-m", "rgbd_codec_ros.cli", *args, "--no-progress"],
                            cwd=str(folder), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not partials(folder) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert partials(folder), "the decompressor never started writing"
    time.sleep(0.3)
    return proc


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("images", [False, True])
def test_interrupted_decompress_leaves_nothing(long_bag, tmp_path, sig, images):
    proc = _start_decompress(long_bag, tmp_path, "out" if images else "out.mcap", images)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_temporary_of_a_killed_run_is_removed_by_the_next(long_bag, tmp_path):
    """SIGKILL (or a crash in native code) leaves the hidden temporary; the next run writing the
    same output removes it, and one writing another output leaves it alone."""
    proc = _start_decompress(long_bag, tmp_path, "out.mcap", images=False)
    proc.kill()
    proc.communicate(timeout=60)
    stale = partials(tmp_path)
    assert len(stale) == 1 and f"pid{proc.pid}." in stale[0]
    rc, _, err = run_cli("bag", "decompress", long_bag, tmp_path / "other.mcap", "--no-progress")
    assert rc == 0, err
    assert partials(tmp_path) == stale
    rc, _, err = run_cli("bag", "decompress", long_bag, tmp_path / "out.mcap", "--no-progress")
    assert rc == 0, err
    assert partials(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.mcap", "out.mcap"]
