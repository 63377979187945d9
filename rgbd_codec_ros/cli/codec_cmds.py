"""``rgbd-codec encode | decode | info``: code one colour + depth image pair to a file and back."""
from __future__ import annotations

import functools
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from rgbd_codec_ros.cli.errors import system_errors_as_codec_errors
from rgbd_codec_ros.codec.base import LEARNED_DEFAULT_MAX_PIXELS, CodecError, RGBDFrame, create_backend
from rgbd_codec_ros.codec.learned.bitstream import is_learned_payload   # no torch: framing only

CLASSICAL_MAGIC = b"RDCL"


def add_parsers(sub) -> None:
    p = sub.add_parser("encode", help="encode a colour + depth image pair into one file",
                       description="Encode a colour image and a 16-bit depth PNG into one .rgbd file.")
    p.add_argument("--color", required=True, help="colour image (PNG/JPEG; RGB or grey)")
    p.add_argument("--depth", required=True, help="16-bit depth PNG (0 = no measurement)")
    p.add_argument("--depth-scale", type=float, default=1000.0,
                   help="depth units per metre in the PNG (1000 = millimetres; default %(default)s)")
    p.add_argument("--out", required=True, help="output file (.rgbd)")
    p.add_argument("--codec", default="learned", help="backend: learned (default) or classical")
    p.add_argument("--model", default=None,
                   help="learned codec weights: a .pt path or a name in the package's models/ folder")
    p.add_argument("--quality", type=float, default=None,
                   help="learned: 0..levels-1 (trained points), fractions between them, down to -1 for "
                        "lower rates; classical: colour quality 1-100")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = default)")
    p.set_defaults(func=run_encode)

    p = sub.add_parser("decode", help="decode a .rgbd file back to images",
                       description="Decode a .rgbd file; depth is written as a 16-bit PNG in the input's units.")
    p.add_argument("file")
    p.add_argument("--color-out", required=True)
    p.add_argument("--depth-out", required=True)
    p.add_argument("--model", default=None, help="learned codec weights if not the shipped ones")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--max-pixels", type=int, default=0, metavar="N",
                   help="largest frame a payload may declare (default: the codec's own limit, "
                        "README 'Security')")
    p.set_defaults(func=run_decode)

    p = sub.add_parser("info", help="print what a .rgbd file holds")
    p.add_argument("file")
    p.add_argument("--max-pixels", type=int, default=0, metavar="N",
                   help="frame-size limit to check the header against (default: the decoder's)")
    p.set_defaults(func=run_info)


def _guard(fn):
    """System errors (OSError, MemoryError) as one-line CodecErrors (exit code 2)."""
    @functools.wraps(fn)
    def run(args):
        with system_errors_as_codec_errors():
            return fn(args)
    return run


def _check_outputs(outputs, inputs) -> None:
    """Refuse outputs that are inputs (or each other), folders, or in a missing folder."""
    from rgbd_codec_ros.bag.storage import refuse_input_as_output

    seen = {}
    for out in outputs:
        refuse_input_as_output(out, inputs)
        real = os.path.realpath(out)
        if real in seen:
            raise CodecError(f"{seen[real]} and {out} are the same file; name two outputs")
        seen[real] = out
        if os.path.isdir(out):
            raise CodecError(f"output {out} is a folder; name a file")
        parent = os.path.dirname(out) or "."
        if not os.path.isdir(parent):
            raise CodecError(f"output folder {parent} does not exist")


class _AtomicFiles:
    """Output files that appear all together or not at all.

    Each is written to a hidden temporary beside it (same extension, so image writers
    pick the same format); ``commit()`` renames them into place; leaving the ``with``
    block by an exception (Ctrl-C included) removes every temporary."""

    def __init__(self):
        self.pending = []

    def __enter__(self) -> "_AtomicFiles":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.discard()
        return False

    def temp_for(self, final: str) -> str:
        from rgbd_codec_ros.bag.storage import OutputError, remove_stale_partials

        path = Path(final)
        suffix = ".partial" + path.suffix
        remove_stale_partials(path, suffix)
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.pid{os.getpid()}.", suffix=suffix,
                                       dir=str(path.parent) if str(path.parent) else ".")
            os.close(fd)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)     # mkstemp made it private
        except OSError as exc:
            raise OutputError(final, exc) from exc
        self.pending.append((tmp, final))
        return tmp

    def commit(self) -> None:
        from rgbd_codec_ros.bag.storage import OutputError

        for tmp, final in self.pending:
            try:
                os.replace(tmp, final)
            except OSError as exc:
                raise OutputError(final, exc) from exc
        self.pending = []

    def discard(self) -> None:
        for tmp, _ in self.pending:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        self.pending = []


def _write_bytes(tmp: str, data: bytes, final: str) -> None:
    from rgbd_codec_ros.bag.storage import OutputError

    try:
        with open(tmp, "wb") as f:
            f.write(data)
    except OSError as exc:
        raise OutputError(final, exc) from exc


def _write_image(tmp: str, image: np.ndarray, final: str) -> None:
    import imagecodecs

    from rgbd_codec_ros.bag.storage import OutputError

    try:
        imagecodecs.imwrite(tmp, image)
    except OSError as exc:
        raise OutputError(final, exc) from exc
    except Exception as exc:   # imagecodecs: no codec for the extension, or it cannot hold the data
        raise CodecError(f"cannot write {final}: {exc}") from None


def _weights(model):
    # imported here: the learned backend pulls in torch, which the classical path does not need
    from rgbd_codec_ros.codec.learned.backend import resolve_weights
    return resolve_weights(model)


def _read_image(path: str) -> np.ndarray:
    import imagecodecs
    if not os.path.isfile(path):
        raise CodecError(f"{path}: no such file")
    try:
        return np.asarray(imagecodecs.imread(path))
    except Exception as exc:   # imagecodecs raises a variety of codec-specific errors
        raise CodecError(f"{path}: cannot read image ({exc})") from None


@_guard
def run_encode(args) -> int:
    _check_outputs([args.out], [args.color, args.depth])
    color = _read_image(args.color)
    depth = _read_image(args.depth)
    if color.ndim == 3 and color.shape[2] == 4:
        color = color[..., :3]
    if color.dtype != np.uint8:
        raise CodecError(f"{args.color}: colour must be 8-bit, got {color.dtype}")
    if depth.dtype != np.uint16 or depth.ndim != 2:
        raise CodecError(f"{args.depth}: depth must be a single-channel 16-bit PNG, got {depth.dtype} {depth.shape}")
    if args.codec == "learned":
        options = {"weights": _weights(args.model), "device": args.device, "threads": args.threads}
        if args.quality is not None:
            options["quality"] = args.quality
    else:
        options = {}
        if args.quality is not None:
            if args.quality != int(args.quality):
                raise CodecError(f"--quality {args.quality:g}: the classical colour quality is an integer 1-100")
            options["color_quality"] = int(args.quality)
    backend = create_backend(args.codec, **options)
    t0 = time.perf_counter()
    enc = backend.encode(RGBDFrame(np.ascontiguousarray(color), depth, args.depth_scale))
    ms = (time.perf_counter() - t0) * 1e3
    with _AtomicFiles() as files:
        _write_bytes(files.temp_for(args.out), enc.payload, args.out)
        files.commit()
    h, w = depth.shape
    print(f"{args.out}: {len(enc.payload)} bytes ({len(enc.payload) * 8 / (h * w):.4f} bpp), "
          f"codec {enc.codec} {enc.model_id} {enc.quality}, rgb {enc.bytes_rgb} B, depth {enc.bytes_depth} B, "
          f"{ms:.0f} ms")
    return 0


def _read_payload(path: str) -> bytes:
    if not os.path.isfile(path):
        raise CodecError(f"{path}: no such file")
    with open(path, "rb") as f:
        return f.read()


@_guard
def run_decode(args) -> int:
    payload = _read_payload(args.file)
    _check_outputs([args.color_out, args.depth_out], [args.file])
    if is_learned_payload(payload):
        backend = create_backend("learned", weights=_weights(args.model), device=args.device,
                                 threads=args.threads)
    else:
        backend = create_backend("classical")
    if args.max_pixels:
        backend.configure(max_pixels=args.max_pixels)
    t0 = time.perf_counter()
    frame = backend.decode(payload)
    ms = (time.perf_counter() - t0) * 1e3
    depth = frame.depth
    if depth.dtype == np.float32:   # metres -> millimetres for a 16-bit PNG
        depth = np.where(np.isfinite(depth), np.clip(np.round(depth * 1000), 0, 65535), 0).astype(np.uint16)
    with _AtomicFiles() as files:     # both images, or neither
        _write_image(files.temp_for(args.color_out), frame.color, args.color_out)
        _write_image(files.temp_for(args.depth_out), depth, args.depth_out)
        files.commit()
    print(f"decoded {frame.width}x{frame.height} in {ms:.0f} ms -> {args.color_out}, {args.depth_out}")
    return 0


@_guard
def run_info(args) -> int:
    payload = _read_payload(args.file)
    if is_learned_payload(payload):
        from rgbd_codec_ros.codec.learned import bitstream as bs
        header, sections = bs.unpack(payload)
        print(f"learned codec payload, format {bs.format_version(payload)}, {len(payload)} bytes")
        for k, v in vars(header).items():
            print(f"  {k}: {v.hex() if isinstance(v, bytes) else v}")
        for k, v in sections.items():
            print(f"  section {k}: {len(v)} bytes")
        # the decoder's own header checks, so that info says whether a decoder would refuse it
        from rgbd_codec_ros.codec.learned.backend import check_header
        check_header(header, sections, args.max_pixels or LEARNED_DEFAULT_MAX_PIXELS)
        print("  header checks: pass (sizes, latent shapes, section lengths, limits)")
    elif payload.startswith(CLASSICAL_MAGIC):
        from rgbd_codec_ros.codec import classical
        fields = classical.describe(payload)
        print(f"classical codec payload, format {fields.pop('format_version')}, {len(payload)} bytes")
        for k, v in fields.items():
            print(f"  {k}: {v}")
        if not fields["keyframe"]:
            print("  predicted frame: decodes only after the frames before it, back to a keyframe")
    else:
        print(f"{len(payload)} bytes, not a payload of this package's codecs (magic {payload[:8]!r})")
    return 0


if __name__ == "__main__":
    from rgbd_codec_ros.cli import main
    sys.exit(main())
