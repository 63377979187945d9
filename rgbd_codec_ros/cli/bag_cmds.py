"""``rgbd-codec bag ...``: compress, decompress, inspect, record and play rosbag2 bags.

Sub-commands: compress, decompress, info, record, play, from-images.
See docs/bags.md for worked examples.
"""
from __future__ import annotations

import argparse
import json
import re
import sqlite3
import sys

from rgbd_codec_ros.cli.errors import system_errors_as_codec_errors
from rgbd_codec_ros.codec.base import CodecError


#: the backend option that --quality sets
_QUALITY_OPTION = {"classical": "color_quality", "learned": "quality"}


def codec_options(args) -> dict:
    """Backend options from -O items ("k=v" or "k=v, k=v"), --quality, --model and --device."""
    from rgbd_codec_ros.ros.options import parse_codec_options   # ROS-free, shared with the nodes

    options = parse_codec_options(", ".join(args.codec_option))
    if getattr(args, "quality", None) is not None:
        q = args.quality
        # whole numbers as integers: the classical colour quality is an integer knob
        options[_QUALITY_OPTION.get(args.codec, "quality")] = int(q) if q == int(q) else q
    if getattr(args, "model", None) is not None:
        if args.codec != "learned":
            raise CodecError("--model applies to the learned codec only")
        from rgbd_codec_ros.codec.learned.backend import resolve_weights

        options["weights"] = resolve_weights(args.model)
    if getattr(args, "device", None) is not None and args.codec == "learned":
        options["device"] = args.device
    return options


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _nonneg_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _positive_float(text: str) -> float:
    v = _nonneg_float(text)
    if v == 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return v


_SIZE_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}


def _byte_size(text: str) -> int:
    """A byte count: a whole number with an optional K / M / G (binary) suffix, e.g. 512M."""
    m = re.fullmatch(r"\s*(\d+)\s*([kmg]?)(?:i?b)?\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"expected a size like 268435456, 256M or 1G, got {text!r}")
    v = int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 byte, got {text!r}")
    return v


def _add_limit_args(p):
    from rgbd_codec_ros.bag.storage import DEFAULT_MAX_CHUNK_BYTES

    p.add_argument("--max-chunk-bytes", type=_byte_size, default=DEFAULT_MAX_CHUNK_BYTES,
                   metavar="SIZE",
                   help="refuse a bag whose .mcap chunks (or .db3 messages) would need more than "
                        "this much memory decompressed, alone or overlapping (default: 256M; "
                        "K/M/G suffixes). Raise it only for bags you trust.")


def _add_output_args(p, what="bag"):
    p.add_argument("--storage", choices=("sqlite3", "mcap"), default=None,
                   help=f"storage of the output {what} (default: implied by an OUT ending in "
                        ".mcap/.db3, else the input's)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")


def add_parsers(subparsers) -> None:
    bag = subparsers.add_parser(
        "bag", help="compress / decompress / inspect / record / play rosbag2 bags",
        description="rosbag2 workflows for CompressedRGBD (.db3 and .mcap, no ROS install needed "
                    "except for record/play). An output appears only when complete.")
    sub = bag.add_subparsers(dest="bag_command", metavar="BAG_COMMAND")
    sub.required = True

    _add_compress_parser(sub)
    _add_decompress_parser(sub)
    _add_info_parser(sub)
    _add_record_parser(sub)
    _add_play_parser(sub)
    _add_from_images_parser(sub)


def _add_compress_parser(sub) -> None:
    p = sub.add_parser(
        "compress", help="raw colour + depth Image topics -> a CompressedRGBD topic",
        description="Pair colour and depth images like the encoder node does, code each pair, "
                    "and write them as rgbd_codec_ros/msg/CompressedRGBD. Other topics are "
                    "copied unchanged unless --drop-raw / --exclude.")
    p.add_argument("input", metavar="IN", help="rosbag2 directory, or a .db3/.mcap file")
    p.add_argument("output", metavar="OUT",
                   help="new bag directory (or OUT.mcap / OUT.db3 for a single file)")
    p.add_argument("--color-topic", required=True, help="sensor_msgs/Image colour topic")
    p.add_argument("--depth-topic", required=True, help="sensor_msgs/Image depth topic (16UC1/32FC1)")
    p.add_argument("--color-info-topic", help="sensor_msgs/CameraInfo of the colour camera")
    p.add_argument("--depth-info-topic", help="sensor_msgs/CameraInfo of the depth camera")
    p.add_argument("--out-topic", default="/rgbd/compressed", help="default: %(default)s")
    p.add_argument("--codec", default="classical", help="backend: classical or learned "
                                                         "(default: %(default)s)")
    p.add_argument("--quality", type=float, help="the backend's main quality knob (classical: "
                   "color_quality 1-100, 100 best, for h264/hevc/av1 mapped onto the CRF; "
                   "learned: 0..levels-1, fractions between, down to -1)")
    p.add_argument("--model", help="learned codec weights: a .pt path or a name in the package's "
                                   "models/ folder (default: the shipped ones)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), help="learned codec device")
    p.add_argument("-O", "--codec-option", action="append", default=[], metavar="KEY=VALUE",
                   help="backend option (repeatable; same form as the encoder node's codec_options), "
                        "e.g. -O color_codec=webp -O depth_codec=rvl_lossy, or video colour "
                        "-O color_codec=h264 -O keyframe_interval=30")
    p.add_argument("--drop-raw", action="store_true",
                   help="leave the colour/depth image and camera_info topics out of OUT")
    p.add_argument("--exclude", action="append", default=[], metavar="TOPIC",
                   help="leave this topic out of OUT (repeatable)")
    p.add_argument("--slop", type=_nonneg_float, default=0.02,
                   help="max stamp difference of a pair, seconds (default: %(default)s)")
    p.add_argument("--queue-size", type=_positive_int, default=10,
                   help="per-stream pairing queue, as the node's (default: %(default)s)")
    p.add_argument("--depth-scale", type=_positive_float, default=1000.0,
                   help="16UC1 depth units per metre (default: %(default)s = millimetres)")
    p.add_argument("--camera-info-period", type=int, default=30,
                   help="attach calibration every N frames (0: only first and when it changes), "
                        "as the encoder node does (default: %(default)s)")
    p.add_argument("--strict", action="store_true",
                   help="fail (write nothing) if any message cannot be read or coded")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_output_args(p)
    _add_limit_args(p)
    p.set_defaults(func=_cmd_compress)


def _add_decompress_parser(sub) -> None:
    p = sub.add_parser(
        "decompress", help="CompressedRGBD -> raw Image + CameraInfo topics, or PNG files",
        description="Decode a CompressedRGBD topic back to sensor_msgs/Image (+CameraInfo) topics "
                    "with the original stamps and encodings, or with --images into a folder of "
                    "colour PNG + 16-bit depth PNG files with meta.json (the shared-data layout). "
                    "Messages are decoded in order; predicted frames (h264/hevc/av1 colour) "
                    "without their reference frames are skipped to the next keyframe and "
                    "counted in the summary.")
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT", nargs="?", help="new bag (omit with --images)")
    p.add_argument("--images", metavar="DIR", help="write a dataset folder instead of a bag")
    p.add_argument("--topic", help="the CompressedRGBD topic (default: the only one)")
    p.add_argument("--color-topic", help="restored colour topic (default: as recorded by compress, "
                                         "else <ns>/color/image_raw)")
    p.add_argument("--depth-topic", help="restored depth topic (default: as recorded, "
                                         "else <ns>/depth/image_raw)")
    p.add_argument("--color-info-topic", help="default: as recorded, else <ns>/color/camera_info")
    p.add_argument("--depth-info-topic", help="default: as recorded, else <ns>/depth/camera_info")
    p.add_argument("--keep-compressed", action="store_true", help="keep the CompressedRGBD topic too")
    p.add_argument("--model", help="learned codec weights if not the shipped ones")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), help="learned codec device")
    p.add_argument("--exclude", action="append", default=[], metavar="TOPIC",
                   help="leave this topic out of OUT (repeatable)")
    p.add_argument("--depth-scale", type=_positive_float, default=1000.0,
                   help="--images: units per metre for 32FC1 depth written as 16-bit PNG "
                        "(default: %(default)s)")
    p.add_argument("--strict", action="store_true",
                   help="fail (write nothing) if a message is damaged or frames were lost "
                        "mid-stream (a start before the first keyframe is not an error)")
    p.add_argument("--no-progress", action="store_true")
    _add_output_args(p, "bag or folder")
    _add_limit_args(p)
    p.set_defaults(func=_cmd_decompress)


def _add_info_parser(sub) -> None:
    p = sub.add_parser("info", help="topics, counts, duration; codec, GOP structure and bit "
                                    "rates of CompressedRGBD topics")
    p.add_argument("input", metavar="IN")
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_limit_args(p)
    p.set_defaults(func=_cmd_info)


def _add_record_parser(sub) -> None:
    p = sub.add_parser(
        "record", help="record live topics (serialized, as received) into a bag",
        description="Subscribe (rclpy, raw serialized messages) and write a bag until Ctrl-C, "
                    "--duration or --max-messages. On a full ROS 2 install `ros2 bag record` "
                    "does the same.")
    p.add_argument("output", metavar="OUT")
    p.add_argument("--topic", action="append", required=True, metavar="TOPIC",
                   help="topic to record (repeatable)")
    p.add_argument("--duration", type=_positive_float, help="stop after this many seconds")
    p.add_argument("--max-messages", type=_positive_int, help="stop after this many messages")
    p.add_argument("--discovery-timeout", type=_positive_float, default=10.0,
                   help="seconds to wait for the topics' publishers (default: %(default)s)")
    p.add_argument("--storage", choices=("sqlite3", "mcap"), default=None,
                   help="default: implied by OUT's suffix, else mcap")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=_cmd_record)


def _add_play_parser(sub) -> None:
    p = sub.add_parser("play", help="publish a bag's serialized messages at the recorded pace")
    p.add_argument("input", metavar="IN")
    p.add_argument("--topic", action="append", default=[], metavar="TOPIC",
                   help="only these topics (repeatable; default: all)")
    p.add_argument("--rate", type=_nonneg_float, default=1.0,
                   help="speed factor; 0 = as fast as possible (default: %(default)s)")
    p.add_argument("--remap", action="append", default=[], metavar="FROM:=TO",
                   help="publish topic FROM as TO (repeatable)")
    p.add_argument("--wait-for-subscribers", type=int, default=0, metavar="N",
                   help="wait until each topic has N subscribers before playing")
    p.add_argument("--discovery-timeout", type=_positive_float, default=10.0)
    _add_limit_args(p)
    p.set_defaults(func=_cmd_play)


def _add_from_images_parser(sub) -> None:
    p = sub.add_parser(
        "from-images", help="make a raw Image bag from a folder of colour/depth PNGs",
        description="The inverse of `decompress --images`: a dataset folder (color/, depth/, "
                    "meta.json) -> a bag of raw sensor_msgs/Image (+CameraInfo) topics, "
                    "as a camera driver would have recorded them.")
    p.add_argument("folder", metavar="DIR")
    p.add_argument("output", metavar="OUT")
    p.add_argument("--limit", type=_positive_int, help="at most this many pairs")
    p.add_argument("--start", type=int, default=0, help="skip this many pairs first")
    p.add_argument("--rate", type=_positive_float, default=30.0, help="frame rate of the stamps (Hz)")
    p.add_argument("--downscale", type=_positive_int, default=1,
                   help="keep every n-th pixel in both directions")
    p.add_argument("--color-encoding", default="rgb8",
                   choices=("rgb8", "bgr8", "rgba8", "bgra8", "mono8"))
    p.add_argument("--depth-encoding", default="16UC1", choices=("16UC1", "32FC1"),
                   help="16UC1 in the folder's units, or 32FC1 metres (default: %(default)s)")
    p.add_argument("--depth-offset-ms", type=float, default=0.0,
                   help="depth stamps lag colour stamps by this much")
    p.add_argument("--prefix", default="/camera", help="topic namespace (default: %(default)s)")
    _add_output_args(p)
    p.set_defaults(func=_cmd_from_images)


# ---------------------------------------------------------------------- commands

def _guard(fn):
    """Run a bag command under the reading limits, with SIGTERM as Ctrl-C, and turn library
    and system errors (rosbags, sqlite, OSError, MemoryError) into one-line CodecErrors
    (exit code 2). Failures to write an output already say ``cannot write OUT: reason``."""
    def run(args):
        from rosbags.rosbag2.errors import ReaderError, WriterError

        from rgbd_codec_ros.bag.live import sigterm_as_interrupt
        from rgbd_codec_ros.bag.storage import set_max_chunk_bytes

        set_max_chunk_bytes(getattr(args, "max_chunk_bytes", None))
        try:
            with system_errors_as_codec_errors():
                if args.bag_command in ("record", "play"):    # they handle SIGTERM themselves
                    return fn(args)
                with sigterm_as_interrupt():
                    return fn(args)
        except (ReaderError, WriterError, sqlite3.Error) as exc:
            raise CodecError(str(exc)) from exc
    return run


@_guard
def _cmd_compress(args) -> int:
    from rgbd_codec_ros.bag.compress import CompressOptions, compress_bag

    opts = CompressOptions(
        color_topic=args.color_topic, depth_topic=args.depth_topic,
        color_info_topic=args.color_info_topic, depth_info_topic=args.depth_info_topic,
        out_topic=args.out_topic, codec=args.codec, codec_options=codec_options(args),
        drop_raw=args.drop_raw, exclude=tuple(args.exclude), slop_s=args.slop,
        queue_size=args.queue_size, depth_scale_per_m=args.depth_scale,
        camera_info_period=args.camera_info_period, storage=args.storage, force=args.force,
        progress=not args.no_progress, strict=args.strict)
    stats = compress_bag(args.input, args.output, opts)
    print(stats.summary())
    return 0


@_guard
def _cmd_decompress(args) -> int:
    from rgbd_codec_ros.bag.decompress import DecompressOptions, decompress_bag, decompress_to_images

    if (args.output is None) == (args.images is None):
        raise CodecError("give either OUT (a bag) or --images DIR (a folder), not both or neither")
    opts = DecompressOptions(
        topic=args.topic, color_topic=args.color_topic, depth_topic=args.depth_topic,
        color_info_topic=args.color_info_topic, depth_info_topic=args.depth_info_topic,
        keep_compressed=args.keep_compressed, exclude=tuple(args.exclude), storage=args.storage,
        force=args.force, progress=not args.no_progress, depth_scale_per_m=args.depth_scale,
        strict=args.strict, learned_options=_learned_decode_options(args))
    if args.images is not None:
        stats = decompress_to_images(args.input, args.images, opts)
    else:
        stats = decompress_bag(args.input, args.output, opts)
    print(stats.summary())
    return 0


def _learned_decode_options(args) -> dict:
    options = {}
    if args.model is not None:
        from rgbd_codec_ros.codec.learned.backend import resolve_weights

        options["weights"] = resolve_weights(args.model)
    if args.device is not None:
        options["device"] = args.device
    return options


@_guard
def _cmd_info(args) -> int:
    from rgbd_codec_ros.bag.info import bag_info, format_info

    info = bag_info(args.input)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


@_guard
def _cmd_record(args) -> int:
    from rgbd_codec_ros.bag.live import record

    counts = record(args.output, args.topic, storage=args.storage, force=args.force,
                    duration_s=args.duration, max_messages=args.max_messages,
                    discovery_timeout_s=args.discovery_timeout,
                    log=lambda text: print(text, file=sys.stderr, flush=True))
    print(json.dumps(counts))
    return 0


@_guard
def _cmd_play(args) -> int:
    from rgbd_codec_ros.bag.live import play

    remap = {}
    for item in args.remap:
        if ":=" not in item:
            raise CodecError(f"--remap {item!r} must look like FROM:=TO")
        a, b = item.split(":=", 1)
        remap[a] = b
    counts = play(args.input, topics=args.topic or None, rate=args.rate,
                  wait_for_subscribers=args.wait_for_subscribers,
                  discovery_timeout_s=args.discovery_timeout, remap=remap,
                  log=lambda text: print(text, file=sys.stderr, flush=True))
    print(json.dumps(counts))
    return 0


@_guard
def _cmd_from_images(args) -> int:
    from rgbd_codec_ros.bag.dataset import folder_to_bag

    prefix = args.prefix.rstrip("/")
    topics = {"color": f"{prefix}/color/image_raw", "depth": f"{prefix}/depth/image_raw",
              "color_info": f"{prefix}/color/camera_info",
              "depth_info": f"{prefix}/depth/camera_info"}
    res = folder_to_bag(args.folder, args.output, limit=args.limit, start=args.start,
                        rate_hz=args.rate, downscale=args.downscale,
                        color_encoding=args.color_encoding, depth_encoding=args.depth_encoding,
                        depth_offset_ns=int(round(args.depth_offset_ms * 1e6)), topics=topics,
                        storage=args.storage, force=args.force)
    print(f"{res['pairs']} pairs written to {res['output']} ({res['storage']}); topics: "
          + ", ".join(res["topics"].values())
          + (f"; 16UC1 depth_scale_per_m {res['depth_scale_per_m']:g} (pass --depth-scale to compress)"
             if args.depth_encoding == "16UC1" else "; 32FC1 depth in metres"))
    return 0
