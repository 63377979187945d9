"""``bag compress``: raw colour + depth Image topics -> one CompressedRGBD topic.

Colour and depth are paired exactly as the encoder node pairs them
(``rgbd_codec_ros.sync.StampPairer``, fed in bag order, i.e. in the order a
live node would have received them), each pair is coded with a backend, and
the result is written as ``rgbd_codec_ros/msg/CompressedRGBD`` with its
complete message definition and RIHS01 hash. Other topics are copied through
byte for byte (with their stored definitions, hashes and QoS) unless dropped.

One backend instance codes the whole output stream, pairs in the order they complete (the
bag's receive order, which is their stamp order): a temporal colour codec (h264, hevc, av1)
writes GOPs that start with a keyframe, and starts a new one where the image size changes,
where the stamps go backwards (a restarted recording) and after a pair that failed to code.
Every message carries ``sequence`` (its index among the written messages) and ``keyframe``.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from rgbd_codec_ros import convert
from rgbd_codec_ros.bag import messages, msgdefs
from rgbd_codec_ros.bag.storage import (
    AtomicBagWriter, input_storage, iter_messages, open_reader, refuse_input_as_output,
    resolve_output)
from rgbd_codec_ros.codec.base import CodecError, create_backend
from rgbd_codec_ros.sync import StampPairer, stamp_to_ns

#: custom_data key under which the compressor records where each CompressedRGBD topic came from
TOPICS_KEY = "rgbd_codec_ros.topics"
DEFAULT_OUT_TOPIC = "/rgbd/compressed"


@dataclass
class CompressOptions:
    color_topic: str
    depth_topic: str
    color_info_topic: Optional[str] = None
    depth_info_topic: Optional[str] = None
    out_topic: str = DEFAULT_OUT_TOPIC
    codec: str = "classical"
    codec_options: Dict[str, Any] = field(default_factory=dict)
    drop_raw: bool = False
    exclude: Sequence[str] = ()
    slop_s: float = 0.02
    queue_size: int = 10
    depth_scale_per_m: float = 1000.0
    camera_info_period: int = 30
    storage: Optional[str] = None
    force: bool = False
    progress: bool = True
    strict: bool = False        # any skipped message fails the run (nothing written)


@dataclass
class CompressStats:
    pairs: int = 0
    color_msgs: int = 0
    depth_msgs: int = 0
    dropped_color: int = 0
    dropped_depth: int = 0
    skipped: int = 0            # unreadable / uncodable messages or pairs
    keyframes: int = 0          # written pairs that decode on their own (intra codecs: all)
    copied: int = 0             # messages of other topics copied through
    raw_image_bytes: int = 0    # serialized bytes of the paired raw images
    compressed_bytes: int = 0   # serialized bytes of the CompressedRGBD messages
    storage: str = ""
    output: str = ""
    last_log_time: Optional[int] = None     # bag time of the last CompressedRGBD written

    def summary(self) -> str:
        ratio = (self.raw_image_bytes / self.compressed_bytes) if self.compressed_bytes else 0.0
        return (f"{self.pairs} pairs written to {self.output} ({self.storage}), "
                f"{self.keyframes} of them keyframes; "
                f"{self.color_msgs} colour / {self.depth_msgs} depth messages read, "
                f"{self.dropped_color} colour / {self.dropped_depth} depth left unpaired, "
                f"{self.skipped} skipped, {self.copied} other messages copied; "
                f"images {self.raw_image_bytes / 1e6:.2f} MB -> {self.compressed_bytes / 1e6:.2f} MB "
                f"({ratio:.1f}:1)")


class Warnings:
    """Per-message warnings: the first ``limit`` are printed, all are counted."""

    def __init__(self, stream=None, limit: int = 20, prefix: str = "warning: "):
        self.stream = stream if stream is not None else sys.stderr
        self.limit = limit
        self.prefix = prefix
        self.count = 0

    def __call__(self, text: str) -> None:
        self.count += 1
        if self.count <= self.limit:
            print(self.prefix + text, file=self.stream)
        elif self.count == self.limit + 1:
            print(self.prefix + "(further warnings not shown; see the summary)", file=self.stream)


def _topic_table(reader) -> str:
    return ", ".join(f"{c.topic} [{c.msgtype}]" for c in reader.connections) or "(no topics)"


def _check_topic(reader, topic: str, msgtype: str, what: str) -> None:
    conns = [c for c in reader.connections if c.topic == topic]
    if not conns:
        raise CodecError(f"{what} topic {topic!r} is not in the bag; topics: {_topic_table(reader)}")
    wrong = [c.msgtype for c in conns if c.msgtype != msgtype]
    if wrong:
        raise CodecError(f"{what} topic {topic!r} has type {wrong[0]}, expected {msgtype}")


def passthrough_definition(conn) -> tuple:
    """(msgdef, rihs01) to write for a copied connection, or raise CodecError."""
    from rosbags.interfaces import MessageDefinitionFormat

    store = msgdefs.typestore()
    text = conn.msgdef.data if conn.msgdef.format != MessageDefinitionFormat.NONE else ""
    digest = conn.digest if str(conn.digest).startswith("RIHS01_") else ""
    if text and digest:
        return text, digest
    known = conn.msgtype in store.types or msgdefs.register_from_definition(store, conn.msgtype, text)
    if not known:
        raise CodecError(f"topic {conn.topic}: type {conn.msgtype} has no stored definition and is "
                         "unknown here; drop it with --exclude")
    if not text:
        text, _ = msgdefs.definition_and_hash(conn.msgtype)
    return text, digest or store.hash_rihs01(conn.msgtype)


class _Encoder:
    """Turns pairs of (bag time, Image msg) into CompressedRGBD CDR bytes."""

    def __init__(self, opts: CompressOptions, warn: Callable[[str], None]):
        self.opts = opts
        self.warn = warn
        self.backend = create_backend(opts.codec, **opts.codec_options)
        if opts.camera_info_period < 0:
            raise CodecError(f"camera_info_period must be >= 0, got {opts.camera_info_period}")
        self.color_info = None
        self.depth_info = None
        self._info_schedule = convert.CameraInfoSchedule(opts.camera_info_period)
        self._last_stamp_ns: Optional[int] = None

    def set_info(self, which: str, info) -> None:
        if which == "color":
            self.color_info = info
        else:
            self.depth_info = info

    def _infos(self):
        """The camera infos to attach to this frame (the encoder node's rule)."""
        return self._info_schedule.infos_for_frame(self.color_info, self.depth_info)

    def encode(self, color_msg, depth_msg, sequence: int) -> Tuple[bytes, bool]:
        """(CDR bytes, keyframe) of the pair; ``sequence``: its index in the output stream."""
        color_arr = convert.image_to_array(color_msg)
        depth_arr = convert.image_to_array(depth_msg)
        frame = convert.images_to_frame(color_arr, color_msg.encoding, depth_arr, depth_msg.encoding,
                                        self.opts.depth_scale_per_m)
        stamp_ns = stamp_to_ns(color_msg.header.stamp)
        frame.stamp_s = stamp_ns / 1e9      # paces a video encoder's rate control
        if self._last_stamp_ns is not None and stamp_ns < self._last_stamp_ns:
            # a restarted recording: predicting across the restart would tie it to the old run
            self.backend.request_keyframe()
        try:
            encoded = self.backend.encode(frame)
        except Exception:
            # the video encoder may have taken the frame in before failing: the next frame must
            # not be predicted from a frame that is never written
            self.backend.request_keyframe()
            raise
        self._last_stamp_ns = stamp_ns
        fields = convert.compressed_fields(encoded, frame, color_msg.encoding, depth_msg.encoding,
                                           sequence=sequence)
        color_info, depth_info = self._infos()
        msg = messages.compressed(fields, color_msg.header, depth_msg.header, color_info, depth_info)
        return messages.serialize(msg, msgdefs.COMPRESSED_RGBD), encoded.keyframe


def compress_bag(inp, out, opts: CompressOptions, warn: Optional[Callable[[str], None]] = None,
                 ) -> CompressStats:
    """Compress one bag; returns statistics. Raises CodecError with a reason for bad input."""
    warn = warn or Warnings()
    stats = CompressStats()
    if opts.slop_s < 0:
        raise CodecError(f"--slop must be >= 0 seconds, got {opts.slop_s}")
    inp = Path(inp)
    out_path, storage, single = resolve_output(out, opts.storage, input_storage(inp)
                                               if inp.exists() else "mcap")
    stats.storage, stats.output = storage, str(out_path)
    refuse_input_as_output(out_path, [inp])
    reader = open_reader(inp)
    try:
        _check_input_topics(reader, opts)
        run = _Compression(opts, warn, stats)
        with AtomicBagWriter(out_path, storage=storage, force=opts.force, single_file=single,
                             inputs=(inp,)) as bag:
            run.open_output(bag, reader)
            run.code_messages(reader)
            run.finish()
    finally:
        reader.close()
    return stats


def _check_input_topics(reader, opts: CompressOptions) -> None:
    """The named topics exist with the right types, and the output topic does not exist yet."""
    _check_topic(reader, opts.color_topic, msgdefs.IMAGE, "colour")
    _check_topic(reader, opts.depth_topic, msgdefs.IMAGE, "depth")
    for t, what in ((opts.color_info_topic, "colour camera_info"),
                    (opts.depth_info_topic, "depth camera_info")):
        if t:
            _check_topic(reader, t, msgdefs.CAMERA_INFO, what)
    if any(c.topic == opts.out_topic for c in reader.connections):
        raise CodecError(f"output topic {opts.out_topic} already exists in the input bag; "
                         "choose another --out-topic")


class _Compression:
    """One run: the input's messages, in bag order, paired and coded or copied into the output."""

    def __init__(self, opts: CompressOptions, warn: Callable[[str], None], stats: CompressStats):
        self.opts, self.warn, self.stats = opts, warn, stats
        self.encoder = _Encoder(opts, warn)
        self.pairer = StampPairer(slop_s=opts.slop_s, queue_size=opts.queue_size)
        self.consumed = {opts.color_topic, opts.depth_topic}
        self.consumed |= {t for t in (opts.color_info_topic, opts.depth_info_topic) if t}
        self.dropped = set(opts.exclude) | (self.consumed if opts.drop_raw else set())
        self.msgdef, self.rihs = msgdefs.definition_and_hash(msgdefs.COMPRESSED_RGBD)
        self.bag = None
        self.out_conn = None
        self.copy_conns: Dict[int, Any] = {}    # input connection id -> output connection

    def open_output(self, bag, reader) -> None:
        """The output's connections: the CompressedRGBD topic, recorded with the topics it came
        from, and every input topic that is not dropped."""
        opts = self.opts
        self.bag = bag
        origin = {opts.out_topic: {
            "color_topic": opts.color_topic, "depth_topic": opts.depth_topic,
            "color_info_topic": opts.color_info_topic or "",
            "depth_info_topic": opts.depth_info_topic or ""}}
        bag.writer.set_custom_data(TOPICS_KEY, json.dumps(origin, sort_keys=True))
        self.out_conn = bag.add_connection(opts.out_topic, msgdefs.COMPRESSED_RGBD, self.msgdef, self.rihs)
        for conn in reader.connections:
            if conn.topic in self.dropped:
                continue
            text, digest = passthrough_definition(conn)
            self.copy_conns[conn.id] = bag.add_connection(
                conn.topic, conn.msgtype, text, digest, conn.ext.offered_qos_profiles)

    def code_messages(self, reader) -> None:
        progress = _progress(reader.message_count, self.opts.progress)
        try:
            for conn, t, data in iter_messages(reader):
                progress.update(1)
                self._message(conn, t, data)
        finally:
            progress.close()

    def _message(self, conn, t: int, data: bytes) -> None:
        opts = self.opts
        topic = conn.topic
        if conn.id in self.copy_conns:
            self.bag.write(self.copy_conns[conn.id], t, data)
            if topic not in self.consumed:
                self.stats.copied += 1
        if topic == opts.color_topic or topic == opts.depth_topic:
            self._image(conn, t, data, is_color=topic == opts.color_topic)
        elif topic in (opts.color_info_topic, opts.depth_info_topic):
            self._camera_info(conn, t, data)

    def _image(self, conn, t: int, data: bytes, is_color: bool) -> None:
        """Pair one colour or depth image; code and write every pair it completes."""
        if is_color:
            self.stats.color_msgs += 1
        else:
            self.stats.depth_msgs += 1
        try:
            msg = messages.deserialize(data, msgdefs.read_type(conn))
            stamp = stamp_to_ns(msg.header.stamp)
        except ValueError as exc:
            self._skip(conn.topic, t, exc)
            return
        item = (t, msg, len(data))
        pairs = self.pairer.add_color(stamp, item) if is_color else self.pairer.add_depth(stamp, item)
        for pair in pairs:
            _write_pair(self.bag, self.out_conn, self.encoder, pair, self.stats, self.warn)

    def _camera_info(self, conn, t: int, data: bytes) -> None:
        try:
            info = messages.deserialize(data, msgdefs.read_type(conn))
        except ValueError as exc:
            self._skip(conn.topic, t, exc)
            return
        self.encoder.set_info("color" if conn.topic == self.opts.color_info_topic else "depth", info)

    def _skip(self, topic: str, t: int, exc: Exception) -> None:
        self.stats.skipped += 1
        self.warn(f"{topic} at t={t}: {exc}; skipped")

    def finish(self) -> None:
        """Count what stayed unpaired; refuse (nothing is written) a run that --strict or an
        empty result makes a failure."""
        stats, opts = self.stats, self.opts
        queued_color, queued_depth = self.pairer.queued   # never completed: unpaired too
        stats.dropped_color = self.pairer.dropped_color + queued_color
        stats.dropped_depth = self.pairer.dropped_depth + queued_depth
        if opts.strict and stats.skipped:
            raise CodecError(f"{stats.skipped} message(s) or pair(s) could not be used "
                             "(see the warnings) and --strict was given; nothing was written")
        if stats.pairs == 0:
            raise CodecError(
                f"no colour/depth pairs were written ({stats.color_msgs} colour and "
                f"{stats.depth_msgs} depth messages read, {stats.skipped} skipped): check the "
                f"topics, and that the stamps of a pair differ by at most --slop "
                f"({opts.slop_s} s); nothing was written")


def _write_pair(bag, out_conn, encoder: _Encoder, pair, stats: CompressStats, warn) -> None:
    t_c, color_msg, n_c = pair.color
    t_d, depth_msg, n_d = pair.depth
    try:
        data, keyframe = encoder.encode(color_msg, depth_msg, sequence=stats.pairs)
    except CodecError as exc:
        stats.skipped += 1
        warn(f"pair at stamp {pair.color_stamp_ns} ns not coded: {exc}; skipped")
        return
    except Exception as exc:
        stats.skipped += 1
        warn(f"pair at stamp {pair.color_stamp_ns} ns not coded, {encoder.backend.name} failed: "
             f"{type(exc).__name__}: {exc}; skipped")
        return
    # logged when the pair is complete, as a live encoder would publish it; never at the time
    # of the message before (two pairs completed at one receive time), so that every reader
    # returns the stream in its coding order, which a temporal decoder needs
    t_log = max(t_c, t_d)
    if stats.last_log_time is not None:
        t_log = max(t_log, stats.last_log_time + 1)
    bag.write(out_conn, t_log, data)
    stats.last_log_time = t_log
    stats.pairs += 1
    stats.keyframes += bool(keyframe)
    stats.raw_image_bytes += n_c + n_d
    stats.compressed_bytes += len(data)


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(total=total, unit="msg", desc="compress", file=sys.stderr, dynamic_ncols=True)
