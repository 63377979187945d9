"""Hostile inputs at the codec library (issue 9): forged learned and classical payloads, bombs,
weights files and checkpoints that would run code. Every input here is made with the project's
own packers (or a real encoder's output, patched); every one must end as a clear error at
bounded cost, and a process that decodes them must never die on a signal."""
from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from rgbd_codec_ros.codec import base, classical
from rgbd_codec_ros.codec.base import CodecError, RGBDFrame
from rgbd_codec_ros.codec.learned import bitstream as bs
from rgbd_codec_ros.codec.learned.backend import LearnedBackend
from rgbd_codec_ros.codec.learned.model import build_model
from rgbd_codec_ros.codec.learned.weights_check import WeightsError
from rgbd_codec_ros.codec.learned.weights_io import export_weights, load_model

from forge import forged as _forged, jxl_size_header
from learned_fixtures import TRAINED_TINY, load_pair

REPO = Path(__file__).resolve().parents[1]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run_script(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter: a crash there is a return code < 0, not a dead pytest."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=_env(), cwd=str(REPO))


@pytest.fixture(scope="module")
def tiny_backend():
    return LearnedBackend(weights=str(TRAINED_TINY), threads=1)


@pytest.fixture(scope="module")
def real_payload(tiny_backend, data_dir):
    color, depth, scale = load_pair(data_dir, "realsense_d435_taeyoung", 3)
    frame = RGBDFrame(np.ascontiguousarray(color[:160, :200]), np.ascontiguousarray(depth[:160, :200]), scale)
    return frame, tiny_backend.encode(frame).payload




# --------------------------------------------------------------------------- learned payloads
def test_issue_frame_of_117_bytes_is_refused_before_any_model_runs(tiny_backend):
    payload = _forged(tiny_backend.model_id, 16384, 16384, version=2)   # the issue's format
    assert len(payload) < 130
    with pytest.raises(CodecError, match="16384x16384.*max_pixels"):
        tiny_backend.decode(payload)
    # the same frame in today's format (container framing: 28 bytes more)
    payload = _forged(tiny_backend.model_id, 16384, 16384)
    assert payload.startswith(bs.MAGIC) and len(payload) < 130 + 28
    with pytest.raises(CodecError, match="16384x16384.*max_pixels"):
        tiny_backend.decode(payload)
    # the same frame naming a model nobody has: refused on its size, not by a weights search
    with pytest.raises(CodecError, match="max_pixels"):
        LearnedBackend(weights=str(TRAINED_TINY), model_path="/nonexistent").decode(
            _forged("nobody@000000000000", 4096, 4096))


@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize("section", [b"", b"\0" * 4, b"\xff" * 6, b"\1" * 10])
def test_rans_sections_that_cannot_be_streams_are_refused(tiny_backend, section, version):
    with pytest.raises(CodecError, match="not a rANS stream"):
        tiny_backend.decode(_forged(tiny_backend.model_id, 640, 480, section, version=version))


@pytest.mark.parametrize("version", bs.READABLE_VERSIONS)
def test_every_cut_bit_flip_and_padding_of_the_framing_is_a_codec_error(version):
    """The framing of each format version this decoder reads: every truncation, every single
    bit flip and any bytes appended end as a CodecError of the unpacker, never another error."""
    payload = _forged("tiny@0123456789ab", 640, 480, bytes(range(8)), version=version)
    header, sections = bs.unpack(payload)
    assert bs.format_version(payload) == version and bs.unpack(bytearray(payload)) == (header, sections)
    for cut in range(len(payload)):
        with pytest.raises(CodecError, match="learned|magic"):
            bs.unpack(payload[:cut])
    for pos in range(len(payload)):
        for bit in range(8):
            bad = bytearray(payload)
            bad[pos] ^= 1 << bit
            with pytest.raises(CodecError):
                bs.unpack(bytes(bad))
    for tail in (b"\0", b"\0" * 4, payload):
        with pytest.raises(CodecError):
            bs.unpack(payload + tail)
    for junk in (None, "RDLN", 3, [82, 68, 76, 78]):
        with pytest.raises(CodecError, match="must be bytes"):
            bs.unpack(junk)


def test_forged_version_3_framing_with_valid_checksums_is_a_clear_error():
    """Container payloads whose every crc32 is right, but whose content is not a learned frame."""
    from rgbd_codec_ros.codec import container

    payload = _forged("tiny@0123456789ab", 640, 480, version=3)
    _, head, bodies = container.unpack(payload, bs.MAGIC, (3,))
    assert len(bodies) == len(bs.SECTIONS)
    last_of_y_depth = len(payload) - sum(map(len, bodies[4:])) - 1
    cases = {
        "has 6 sections": container.pack(bs.MAGIC, 3, head, bodies[:6]),
        "has 8 sections": container.pack(bs.MAGIC, 3, head, bodies + [b""]),
        "header has the wrong length": container.pack(bs.MAGIC, 3, head[:-1], bodies),
        "header has the wrong length ": container.pack(bs.MAGIC, 3, head + b"\0", bodies),
        "header has the wrong length  ": container.pack(bs.MAGIC, 3, b"", bodies),
        "malformed model id": container.pack(bs.MAGIC, 3, head[:1] + b"\xff" + head[2:], bodies),
        "version 2 .magic b'RDLN'. is not supported": container.pack(bs.MAGIC, 2, head, bodies),
        "version 4 .magic b'RDLN'. is not supported": container.pack(bs.MAGIC, 4, head, bodies),
        "version 3 .magic b'RGBDL'. is not supported": bs.LEGACY_MAGIC + b"\x03" + payload[5:],
        "section y_depth is corrupted": (payload[:last_of_y_depth] + bytes([payload[last_of_y_depth] ^ 1])
                                         + payload[last_of_y_depth + 1:]),
        "truncated: ": payload[:-1],
        "header is corrupted": payload[:20] + bytes([payload[20] ^ 4]) + payload[21:],
    }
    for message, forged in cases.items():
        with pytest.raises(CodecError, match=message.strip()):
            bs.unpack(forged)
    assert not bs.is_learned_payload(b"RDCL" + payload[4:]) and not bs.is_learned_payload(b"RGBD")


def test_max_pixels_option_bounds_the_declared_size(tiny_backend, real_payload):
    frame, payload = real_payload
    strict = LearnedBackend(weights=str(TRAINED_TINY), max_pixels=frame.width * frame.height - 1)
    with pytest.raises(CodecError, match="limit of"):
        strict.decode(payload)
    strict.configure(max_pixels=frame.width * frame.height)
    assert strict.decode(payload).color.shape == frame.color.shape
    for bad in (0, -5, True, "many", base.HARD_MAX_PIXELS + 1, 2.5):
        with pytest.raises(CodecError, match="max_pixels"):
            strict.configure(max_pixels=bad)
    for bad in (-1, 65, 1017, "x", True):
        with pytest.raises(CodecError, match="threads"):
            LearnedBackend(weights=str(TRAINED_TINY), threads=bad)


@pytest.mark.slow
def test_forged_rans_streams_never_crash_the_process():
    """Word-aligned streams of garbage reach compressai's native decoder (which has no bounds
    checks): decoding them must end in the latent-hash refusal, never in a signal."""
    code = f"""
        import random
        from rgbd_codec_ros.codec.base import CodecError
        from rgbd_codec_ros.codec.learned.backend import LearnedBackend
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
        from forge import forged as _forged
        be = LearnedBackend(weights={str(TRAINED_TINY)!r}, threads=1)
        rng = random.Random(7)
        n = 0
        for size in (8, 12, 16, 64, 400):
            for fill in (b"\\xff", b"\\x00", b"\\x80", None):
                sec = bytes(rng.randrange(256) for _ in range(size)) if fill is None else fill * size
                for w, h in ((128, 128), (300, 200), (640, 480)):
                    try:
                        be.decode(_forged(be.model_id, w, h, sec))
                        raise SystemExit("a forged frame decoded")
                    except CodecError as exc:
                        n += 1
        # the largest frame the default limit lets through, with the shortest streams it lets
        # through: without the guard the native decoder reads megabytes past them (SIGSEGV)
        for fill in (b"\\x00", b"\\xff"):
            try:
                be.decode(_forged(be.model_id, 1920, 1080, fill * 8))
                raise SystemExit("a forged frame decoded")
            except CodecError as exc:
                n += 1
        print("refused", n)
    """
    r = _run_script(code)
    assert r.returncode == 0, f"decoder process ended with {r.returncode}: {r.stderr[-2000:]}"
    assert "refused 62" in r.stdout


@pytest.mark.slow
def test_fuzz_learned_container_with_valid_crcs(real_payload):
    """Mutated headers and sections, re-packed with valid CRCs by the project's packer: every
    one decodes to a frame of its declared shape or is a CodecError; the process survives."""
    frame, payload = real_payload
    code = f"""
        import random, dataclasses, numpy as np
        from rgbd_codec_ros.codec.base import CodecError
        from rgbd_codec_ros.codec.learned import bitstream as bs
        from rgbd_codec_ros.codec.learned.backend import LearnedBackend
        be = LearnedBackend(weights={str(TRAINED_TINY)!r}, threads=1)
        payload = bytes.fromhex({payload.hex()!r})
        header, sections = bs.unpack(payload)
        rng = random.Random(2024)
        ints = dict(width=(0, 1, 127, 129, 200, 201, 4096, 65535), height=(0, 1, 160, 161, 65535),
                    padded_width=(0, 64, 192, 256, 65535), padded_height=(0, 128, 192, 65535),
                    z_height=(0, 1, 2, 3, 255, 65535), z_width=(0, 1, 3, 4, 65535),
                    color_mode=(1, 2, 255), depth_type=(1, 2, 255))
        floats = dict(quality=(-1.0, -0.5, 2.75, 3.0, 100.0, -128.0), depth_scale_per_m=(0.0, -1.0, float("nan"), 1.0),
                      depth_range_m=(0.0, 5.0, float("inf")))
        outcomes = dict(error=0, decoded=0)
        for trial in range({300}):
            h = dataclasses.replace(header)
            s = dict(sections)
            for _ in range(rng.randint(1, 3)):
                what = rng.random()
                if what < 0.35:
                    k = rng.choice(sorted(ints)); setattr(h, k, rng.choice(ints[k]))
                elif what < 0.5:
                    k = rng.choice(sorted(floats)); setattr(h, k, rng.choice(floats[k]))
                elif what < 0.6:
                    h.latent_hash = bytes(rng.randrange(256) for _ in range(8))
                elif what < 0.7:
                    h.model_id = rng.choice(["", "x", h.model_id[:-1] + "0", "tiny@" + "f" * 12])
                else:
                    name = rng.choice(bs.SECTIONS)
                    body = bytearray(s[name])
                    op = rng.randrange(5)
                    if op == 0 and body:
                        del body[rng.randrange(len(body)):]
                    elif op == 1 and body:
                        i = rng.randrange(len(body)); body[i] ^= 1 << rng.randrange(8)
                    elif op == 2:
                        body += bytes(rng.randrange(256) for _ in range(rng.choice((1, 4, 64))))
                    elif op == 3:
                        body = bytearray(bytes(rng.randrange(256) for _ in range(rng.choice((0, 8, 32, 400)))))
                    else:
                        other = rng.choice(bs.SECTIONS); body = bytearray(s[other])
                    s[name] = bytes(body)
            try:   # today's framing mostly, the format-2 one (old recordings) a quarter of the time
                forged = bs.pack(h, s, version=2 if rng.random() < 0.25 else bs.VERSION)
            except Exception:   # a field the packer cannot write (out of its integer range)
                continue
            try:
                out = be.decode(forged)
            except CodecError:
                outcomes["error"] += 1
                continue
            want = (h.height, h.width) if h.color_mode == 1 else (h.height, h.width, 3)
            assert out.color.shape == want and out.depth.shape == (h.height, h.width), (trial, out.color.shape)
            outcomes["decoded"] += 1
        print(outcomes)
    """
    r = _run_script(code, timeout=600)
    assert r.returncode == 0, f"fuzzed decoder ended with {r.returncode}: {r.stderr[-3000:]}"
    counts = eval(r.stdout.strip().splitlines()[-1])
    assert counts["error"] > 200, counts


def test_payload_naming_an_unknown_model_finds_weights_added_later(tmp_path, real_payload):
    """The weights index costs a stat per file for unknown ids, and still sees new files."""
    frame, payload = real_payload
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "junk.pt").write_bytes(b"not a weights file")
    be = LearnedBackend(weights=None, model_path=str(folder), threads=1)
    be._decoders.clear()     # a decoder-only backend: none of the shipped weights match
    for _ in range(3):
        with pytest.raises(CodecError, match="encoded with model"):
            be.decode(payload)
    (folder / "tiny.pt").write_bytes(TRAINED_TINY.read_bytes())
    assert be.decode(payload).color.shape == frame.color.shape


# --------------------------------------------------------------------------- classical payloads
def _classical_with_colour(colour_codec: str, section0: bytes, w=64, h=64) -> bytes:
    be = classical.ClassicalBackend(color_codec=colour_codec)
    frame = RGBDFrame(np.zeros((h, w, 3), np.uint8), np.full((h, w), 1000, np.uint16))
    from rgbd_codec_ros.codec import container
    _, header, sections = container.unpack(be.encode(frame).payload, classical.MAGIC,
                                           (classical.FORMAT_VERSION,))
    return container.pack(classical.MAGIC, classical.FORMAT_VERSION, header, [section0, sections[1]])


def test_classical_colour_stream_larger_than_its_header_is_refused_before_decoding():
    big = jxl_size_header(16384, 16384) + bytes(31000)
    payload = _classical_with_colour("jpegxl", big)
    with pytest.raises(CodecError, match="16384x16384, the header says 64x64"):
        classical.ClassicalBackend().decode(payload)
    # a real AVIF of 128x128 whose image-size property was edited down to 64x64: the AV1
    # sequence header still allows 128x128 frames
    import imagecodecs
    avif = bytearray(imagecodecs.avif_encode(np.zeros((128, 128, 3), np.uint8), level=50, speed=8))
    at = avif.find(b"ispe") + 8
    avif[at:at + 8] = struct.pack(">II", 64, 64)
    with pytest.raises(CodecError, match="frames up to 128x128"):
        classical.ClassicalBackend().decode(_classical_with_colour("avif", bytes(avif)))
    # a JPEG whose frame header says 16384x16384
    jpeg = bytearray(imagecodecs.jpeg8_encode(np.zeros((64, 64, 3), np.uint8), level=80))
    sof = jpeg.find(b"\xff\xc0") + 5
    jpeg[sof:sof + 4] = struct.pack(">HH", 16384, 16384)
    with pytest.raises(CodecError, match="16384x16384"):
        classical.ClassicalBackend().decode(_classical_with_colour("jpeg", bytes(jpeg)))


def test_classical_max_pixels_bounds_the_declared_size():
    be = classical.ClassicalBackend()
    frame = RGBDFrame(np.zeros((48, 64, 3), np.uint8), np.full((48, 64), 700, np.uint16))
    payload = be.encode(frame).payload
    be.configure(max_pixels=64 * 48 - 1)
    with pytest.raises(CodecError, match="3072 pixels"):
        be.decode(payload)
    be.configure(max_pixels=64 * 48)
    assert be.decode(payload).depth.shape == (48, 64)
    with pytest.raises(CodecError, match="max_pixels"):
        be.configure(max_pixels=0)


# --------------------------------------------------------------------------- weights files
def _write_weights(path: Path, preset: dict, state=None, variant="joint") -> None:
    torch.save({"metadata": {"name": "evil", "preset": preset, "variant": variant},
                "state_dict": state or {}}, str(path))


def test_weights_file_declaring_a_giant_preset_is_refused_before_building(tmp_path):
    path = tmp_path / "giant.pt"
    _write_weights(path, {"name": "giant", "N": 100000, "M": 200000, "groups": [200000],
                          "context_widths": [9000, 9000]})
    assert path.stat().st_size < 4096
    code = f"""
        from rgbd_codec_ros.codec.learned.weights_io import load_model
        from rgbd_codec_ros.codec.learned.weights_check import WeightsError

        def hwm_kb():   # this process's own peak (ru_maxrss would count the parent's pages)
            return int(next(ln for ln in open("/proc/self/status") if ln.startswith("VmHWM")).split()[1])
        before = hwm_kb()
        try:
            load_model({str(path)!r})
        except WeightsError as exc:
            print("refused:", exc)
        print("peak growth kB", hwm_kb() - before)
    """
    r = _run_script(code)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "refused:" in r.stdout and "outside" in r.stdout
    growth_kb = int(r.stdout.split("peak growth kB")[1])
    assert growth_kb < 100 * 1024, r.stdout       # the model was never built


def test_weights_files_that_do_not_fit_their_model_are_clear_errors(tmp_path):
    good = torch.load(str(TRAINED_TINY), weights_only=True)
    cases = {}
    lite_named = dict(good["metadata"]["preset"], name="lite")          # a known name, other sizes
    cases["renamed"] = {"metadata": dict(good["metadata"], preset=lite_named), "state_dict": good["state_dict"]}
    state = dict(good["state_dict"])
    key = next(k for k in state if k.endswith("layer.weight"))
    state[key] = torch.zeros(3, 3)
    cases["shape"] = {"metadata": good["metadata"], "state_dict": state}
    state = dict(good["state_dict"])
    state["g_a.extra"] = torch.zeros(1)
    cases["extra"] = {"metadata": good["metadata"], "state_dict": state}
    state = dict(good["state_dict"])
    cdf_key = next(k for k in state if k.endswith("_quantized_cdf"))
    cdf = state[cdf_key].clone()
    cdf[0, 1] = 0                          # a CDF that does not rise: the native coder's assumption
    state[cdf_key] = cdf
    cases["cdf"] = {"metadata": good["metadata"], "state_dict": state}
    cases["variant"] = {"metadata": dict(good["metadata"], variant="both"), "state_dict": good["state_dict"]}
    cases["not_a_mapping"] = [1, 2, 3]
    for name, blob in cases.items():
        path = tmp_path / f"{name}.pt"
        torch.save(blob, str(path))
        with pytest.raises(WeightsError, match=str(path)):
            load_model(str(path))
    (tmp_path / "garbage.pt").write_bytes(os.urandom(1600))
    with pytest.raises(WeightsError, match="not a weights file"):
        load_model(str(tmp_path / "garbage.pt"))


class _RunsCode:
    """A pickle that runs code on load (what torch.load(weights_only=False) would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_weights_and_checkpoints_never_run_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as fh:
        pickle.dump({"format": "rgbd-codec-train/1", "payload": _RunsCode(marker)}, fh)
    torch.save({"format": "rgbd-codec-train/1", "x": _RunsCode(marker)}, str(tmp_path / "evil_zip.pt"))
    with pytest.raises(WeightsError):
        load_model(str(evil))
    with pytest.raises(CodecError, match="weights"):
        LearnedBackend(weights=str(tmp_path / "evil_zip.pt"))
    from rgbd_codec_ros.training.trainer import TrainError, safe_torch_load
    for f in (evil, tmp_path / "evil_zip.pt"):
        with pytest.raises(TrainError, match="cannot read checkpoint"):
            safe_torch_load(str(f), "checkpoint")
    assert not marker.exists()


def test_latest_pointer_cannot_lead_out_of_the_checkpoint_folder(tmp_path):
    from rgbd_codec_ros.training.trainer import TrainError, latest_checkpoint
    ck = tmp_path / "ck"
    ck.mkdir()
    (tmp_path / "outside.pt").write_bytes(b"x")
    for name in ("../outside.pt", str(tmp_path / "outside.pt"), "sub/../../outside.pt"):
        (ck / "latest").write_text(name + "\n")
        with pytest.raises(TrainError, match="not a checkpoint file inside"):
            latest_checkpoint(str(ck))
    os.symlink(tmp_path / "outside.pt", ck / "step_00000001.pt")
    (ck / "latest").write_text("step_00000001.pt\n")
    with pytest.raises(TrainError, match="link out of"):
        latest_checkpoint(str(ck))


def test_cli_refuses_hostile_weights_with_one_line(tmp_path, real_payload):
    _, payload = real_payload
    (tmp_path / "x.rgbd").write_bytes(payload)
    bad = tmp_path / "giant.pt"
    _write_weights(bad, {"name": "giant", "N": 100000, "M": 1, "groups": [1], "context_widths": [1, 1]})
    r = subprocess.run([sys.executable, "-m", "rgbd_codec_ros.cli", "decode", str(tmp_path / "x.rgbd"),
                        "--model", str(bad), "--color-out", str(tmp_path / "c.png"),
                        "--depth-out", str(tmp_path / "d.png")],
                       capture_output=True, text=True, env=_env(), cwd=str(REPO), timeout=300)
    assert r.returncode in (1, 2), r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and "Warning" not in ln and "warn" not in ln]
    assert len(lines) == 1 and "giant.pt" in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "c.png").exists()


# --------------------------------------------------------------------------- export
def test_export_keeps_every_constant_and_the_estimated_bits(tmp_path, data_dir):
    """Likelihood bounds survive export (fp16 made 1e-9 a 0); the exported model's estimated
    bits are finite and within 0.5 % of the float model's, for both modalities."""
    torch.manual_seed(3)
    model = build_model("tiny").eval()
    color, depth, scale = load_pair(data_dir, "7scenes_kinect1", 0)
    rgb = torch.from_numpy(color[:128, :128]).permute(2, 0, 1)[None].float() / 255
    d = torch.from_numpy(depth[:128, :128].astype(np.float32) / scale / 10.0)[None, None].clamp(0, 1)

    def bits(m):
        with torch.no_grad():
            out = m(rgb, d, 1)
        return {k: float(sum(-torch.log2(v).sum() for v in out["likelihoods"][k].values()))
                for k in ("rgb", "depth")}
    before = bits(model)
    export_weights(model, str(tmp_path / "w.pt"), {"name": "t"})
    loaded, _ = load_model(str(tmp_path / "w.pt"))
    for k, v in loaded.state_dict().items():
        if k.endswith("likelihood_lower_bound.bound"):
            assert float(v) == pytest.approx(1e-9, rel=1e-6), k
    after = bits(loaded)
    for k in ("rgb", "depth"):
        assert np.isfinite(after[k])
        assert after[k] == pytest.approx(before[k], rel=5e-3), (k, before, after)
    raw = torch.load(str(tmp_path / "w.pt"), weights_only=True)["state_dict"]
    assert all(raw[k].dtype == torch.float32 for k in raw if k.endswith(".bound"))
    # the shipped files carry the fp16 zero; loading restores the constant from the code
    shipped, _ = load_model(str(REPO / "rgbd_codec_ros" / "models" / "lite.pt"))
    assert all(float(v) > 0 for k, v in shipped.state_dict().items() if k.endswith(".bound"))
