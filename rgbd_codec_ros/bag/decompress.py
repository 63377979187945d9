"""``bag decompress``: CompressedRGBD topic -> raw Image + CameraInfo topics, or a folder of PNGs.

Each message is decoded with ``convert.decode_compressed`` (the same call the
decoder node makes), so what lands in the bag or folder is exactly what a
live decoder would publish: the colour and depth images in the encodings,
sizes, stamps and frame ids they had before coding, and the latest camera
calibration carried by the stream, stamped like the image it goes with.

Messages are decoded in bag order by one set of backends for the topic (:class:`TopicDecoder`),
so that a temporal colour codec (h264, hevc, av1) finds each predicted frame's references.
What cannot be decoded is never written, and is counted by reason: predicted frames before the
stream's first keyframe (a recording that joined a running stream), predicted frames after
lost or damaged ones (up to the next keyframe), stale duplicates, and damaged messages.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

from rgbd_codec_ros import convert
from rgbd_codec_ros.bag import messages, msgdefs
from rgbd_codec_ros.bag.compress import TOPICS_KEY, Warnings, _progress, passthrough_definition
from rgbd_codec_ros.bag.dataset import PairsFolderWriter
from rgbd_codec_ros.bag.storage import (
    AtomicBagWriter, embedded_metadata, input_storage, iter_messages, open_reader,
    refuse_input_as_output, resolve_output)
from rgbd_codec_ros.codec.base import CodecError, MissingReference, create_backend
from rgbd_codec_ros.sync import stamp_to_ns


@dataclass
class DecompressOptions:
    topic: Optional[str] = None           # the CompressedRGBD topic; default: the only one
    color_topic: Optional[str] = None     # names of the restored topics; default: as recorded
    depth_topic: Optional[str] = None     #   by `bag compress`, else <ns>/color/image_raw, ...
    color_info_topic: Optional[str] = None
    depth_info_topic: Optional[str] = None
    keep_compressed: bool = False
    exclude: Sequence[str] = ()
    storage: Optional[str] = None
    force: bool = False
    progress: bool = True
    depth_scale_per_m: float = 1000.0     # --images only: units for 32FC1 depth written as PNG
    strict: bool = False                  # any undecodable message fails the run (nothing written)
    learned_options: Dict[str, Any] = field(default_factory=dict)   # weights=..., device=...


@dataclass
class DecompressStats:
    frames: int = 0
    skipped: int = 0            # damaged: not deserializable, or not decodable
    before_keyframe: int = 0    # predicted frames before the topic's first keyframe
    lost_reference: int = 0     # predicted frames after lost or damaged ones, to the next keyframe
    stale: int = 0              # duplicates or late copies of frames already decoded: dropped
    copied: int = 0
    output: str = ""
    topics: Optional[Dict[str, str]] = None

    def summary(self) -> str:
        text = (f"{self.frames} pairs decoded to {self.output}; {self.skipped} skipped, "
                f"{self.copied} other messages copied")
        missing = []
        if self.before_keyframe:
            missing.append(f"{self.before_keyframe} predicted frames before the first keyframe")
        if self.lost_reference:
            missing.append(f"{self.lost_reference} after lost or damaged frames, up to the "
                           "next keyframe")
        if missing:
            text += "; not decodable without their reference frames: " + ", ".join(missing)
        if self.stale:
            text += f"; {self.stale} stale duplicates dropped"
        return text


def _refuse_incomplete(opts, stats, topic: str) -> None:
    """Raise (so that nothing is written) if --strict met a damaged message or frames lost
    mid-stream, or if nothing decoded. A start mid-GOP and stale duplicates are how a
    recording that joined a running stream looks: they are reported, not refused."""
    if opts.strict and (stats.skipped or stats.lost_reference):
        raise CodecError(f"{stats.skipped} message(s) could not be decoded and "
                         f"{stats.lost_reference} predicted frame(s) lost their references (see "
                         "the warnings), and --strict was given; nothing was written")
    if stats.frames == 0:
        raise CodecError(f"no message of {topic} could be decoded ({stats.skipped} skipped, "
                         f"{stats.before_keyframe + stats.lost_reference} predicted frames "
                         "without a keyframe before them); nothing was written")


def read_custom_data(path) -> Dict[str, str]:
    """rosbag2 ``custom_data`` of a bag (directory or bare file)."""
    custom = embedded_metadata(path).get("custom_data") or {}
    return {str(k): str(v) for k, v in custom.items()} if isinstance(custom, dict) else {}


def compressed_topics(reader) -> list:
    return sorted({c.topic for c in reader.connections if c.msgtype == msgdefs.COMPRESSED_RGBD})


def choose_topic(reader, topic: Optional[str]) -> str:
    topics = compressed_topics(reader)
    if topic:
        if topic not in topics:
            raise CodecError(f"topic {topic!r} is not a {msgdefs.COMPRESSED_RGBD} topic of the bag; "
                             f"those are: {', '.join(topics) or '(none)'}")
        return topic
    if not topics:
        table = ", ".join(f"{c.topic} [{c.msgtype}]" for c in reader.connections) or "(no topics)"
        raise CodecError(f"the bag has no {msgdefs.COMPRESSED_RGBD} topic; topics: {table}")
    if len(topics) > 1:
        raise CodecError(f"the bag has several CompressedRGBD topics ({', '.join(topics)}); "
                         "choose one with --topic")
    return topics[0]


def restored_topic_names(inp, topic: str, opts: DecompressOptions) -> Dict[str, str]:
    recorded = {}
    try:
        recorded = json.loads(read_custom_data(inp).get(TOPICS_KEY, "{}")).get(topic, {})
    except (ValueError, AttributeError):
        recorded = {}
    ns = topic.rsplit("/", 1)[0] or ""
    defaults = {"color_topic": f"{ns}/color/image_raw", "depth_topic": f"{ns}/depth/image_raw",
                "color_info_topic": f"{ns}/color/camera_info",
                "depth_info_topic": f"{ns}/depth/camera_info"}
    names = {}
    for key, default in defaults.items():
        names[key] = getattr(opts, key) or recorded.get(key) or default
    return names


def _backends(opts: DecompressOptions) -> Dict[str, object]:
    """Backend instances by codec name for convert.decode_compressed (others made on first use)."""
    if opts.learned_options:
        return {"learned": create_backend("learned", **opts.learned_options)}
    return {}


class TopicDecoder:
    """Decodes the messages of one CompressedRGBD topic, in bag order, with one backend per
    codec, counting into ``stats`` (and warning about) what it cannot decode."""

    def __init__(self, topic: str, opts: DecompressOptions, stats: DecompressStats,
                 warn: Callable[[str], None]):
        self.topic, self.stats, self.warn = topic, stats, warn
        self.backends = _backends(opts)
        self._started = False       # a message decoded or found damaged: later misses are losses
        self._waiting = False       # skipping predicted frames after a loss

    def decode(self, conn, t: int, data):
        """(msg, frame, color_encoding, depth_encoding), or None for a message that is not
        decodable (counted)."""
        try:
            msg = messages.deserialize(data, msgdefs.read_type(conn))
            frame, color_enc, depth_enc = convert.decode_compressed(msg, self.backends)
        except MissingReference as exc:
            self._missing_reference(t, exc)
            return None
        except Exception as exc:
            self.damaged(t, exc)
            return None
        self._started, self._waiting = True, False
        return msg, frame, color_enc, depth_enc

    def damaged(self, t: int, exc: BaseException) -> None:
        """Count a message that cannot be decoded or written (also after it was decoded)."""
        self._started = True
        self.stats.skipped += 1
        self.warn(f"{self.topic} at t={t}: {_why(exc)}; skipped")

    def _missing_reference(self, t: int, exc: MissingReference) -> None:
        if exc.stale:
            self.stats.stale += 1
            self.warn(f"{self.topic} at t={t}: {exc}; a stale duplicate, dropped")
        elif not self._started:
            self.stats.before_keyframe += 1
        else:
            self.stats.lost_reference += 1
            if not self._waiting:   # once per run of skipped frames
                self.warn(f"{self.topic} at t={t}: {exc}; skipping to the next keyframe")
            self._waiting = True


def _why(exc: BaseException) -> str:
    """A damaged message's reason: the codec's message, or the exception type where unexpected."""
    if isinstance(exc, ValueError):     # CodecError included
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _restored_records(decoded, names, latest, img_def, info_def):
    """A decoded CompressedRGBD message as [(topic, msgtype, definition, CDR bytes)].

    Everything that can fail on a damaged or hostile message happens here, before
    anything is written; ``latest`` (the calibration carried so far) is updated only
    when this succeeds."""
    msg, frame, color_enc, depth_enc = decoded
    color_arr, depth_arr = convert.frame_to_images(frame, color_enc, depth_enc)
    out = [
        (names["color_topic"], msgdefs.IMAGE, img_def, messages.serialize(
            messages.image(color_arr, color_enc, messages.copy_header(msg.header)), msgdefs.IMAGE)),
        (names["depth_topic"], msgdefs.IMAGE, img_def, messages.serialize(
            messages.image(depth_arr, depth_enc, messages.copy_header(msg.depth_header)),
            msgdefs.IMAGE)),
    ]
    now = dict(latest)
    for which, infos, hdr in (("color", msg.color_camera_info, msg.header),
                              ("depth", msg.depth_camera_info, msg.depth_header)):
        if len(infos):
            now[which] = infos[0]
        if now[which] is not None:
            out.append((names[f"{which}_info_topic"], msgdefs.CAMERA_INFO, info_def,
                        messages.serialize(messages.restamp_camera_info(now[which], hdr),
                                           msgdefs.CAMERA_INFO)))
    latest.update(now)
    return out


def decompress_bag(inp, out, opts: DecompressOptions,
                   warn: Optional[Callable[[str], None]] = None) -> DecompressStats:
    warn = warn or Warnings()
    stats = DecompressStats()
    inp = Path(inp)
    out_path, storage, single = resolve_output(out, opts.storage, input_storage(inp)
                                               if inp.exists() else "mcap")
    stats.output = str(out_path)
    refuse_input_as_output(out_path, [inp])
    reader = open_reader(inp)
    try:
        topic = choose_topic(reader, opts.topic)
        names = restored_topic_names(inp, topic, opts)
        stats.topics = names
        dropped = set(opts.exclude) | (set() if opts.keep_compressed else {topic})
        kept = [c for c in reader.connections if c.topic not in dropped]
        clash = sorted({c.topic for c in kept} & set(names.values()))
        if clash:
            raise CodecError(f"the bag already has topic(s) {', '.join(clash)}; restore under other "
                             "names (--color-topic/--depth-topic/--color-info-topic/"
                             "--depth-info-topic) or drop them with --exclude")
        decoder = TopicDecoder(topic, opts, stats, warn)
        with AtomicBagWriter(out_path, storage=storage, force=opts.force, single_file=single,
                             inputs=(inp,)) as bag:
            copy_conns = {}
            for conn in kept:
                text, digest = passthrough_definition(conn)
                copy_conns[conn.id] = bag.add_connection(conn.topic, conn.msgtype, text, digest,
                                                         conn.ext.offered_qos_profiles)
            img_def = msgdefs.definition_and_hash(msgdefs.IMAGE)
            info_def = msgdefs.definition_and_hash(msgdefs.CAMERA_INFO)
            bag.add_connection(names["color_topic"], msgdefs.IMAGE, *img_def)
            bag.add_connection(names["depth_topic"], msgdefs.IMAGE, *img_def)
            latest = {"color": None, "depth": None}
            progress = _progress(reader.message_count, opts.progress)
            try:
                for conn, t, data in iter_messages(reader):
                    progress.update(1)
                    if conn.id in copy_conns:
                        bag.write(copy_conns[conn.id], t, data)
                        if conn.topic != topic:
                            stats.copied += 1
                    if conn.topic != topic:
                        continue
                    decoded = decoder.decode(conn, t, data)
                    if decoded is None:
                        continue
                    try:
                        records = _restored_records(decoded, names, latest, img_def, info_def)
                    except Exception as exc:
                        decoder.damaged(t, exc)
                        continue
                    for rtopic, rtype, rdef, rdata in records:
                        bag.write(bag.add_connection(rtopic, rtype, *rdef), t, rdata)
                    stats.frames += 1
            finally:
                progress.close()
            _refuse_incomplete(opts, stats, topic)
    finally:
        reader.close()
    return stats


def decompress_to_images(inp, out_dir, opts: DecompressOptions,
                         warn: Optional[Callable[[str], None]] = None) -> DecompressStats:
    """Decode a CompressedRGBD topic into a dataset folder named by colour stamps (ns)."""
    warn = warn or Warnings()
    stats = DecompressStats(output=str(out_dir))
    refuse_input_as_output(out_dir, [inp])
    reader = open_reader(inp)
    try:
        topic = choose_topic(reader, opts.topic)
        decoder = TopicDecoder(topic, opts, stats, warn)
        conns = [c for c in reader.connections if c.topic == topic]
        used_ids = set()
        codecs, intrinsics = set(), None
        with PairsFolderWriter(out_dir, force=opts.force, inputs=(inp,)) as folder:
            progress = _progress(sum(c.msgcount for c in conns), opts.progress)
            try:
                for conn, t, data in iter_messages(reader, conns):
                    progress.update(1)
                    decoded = decoder.decode(conn, t, data)
                    if decoded is None:
                        continue
                    msg, frame, color_enc, depth_enc = decoded
                    try:
                        if depth_enc == "16UC1":
                            depth, scale = frame.depth, float(frame.depth_scale_per_m)
                        else:   # float metres -> integer units for a 16-bit PNG
                            scale = float(opts.depth_scale_per_m)
                            depth = convert.depth_from_codec(frame.depth, "16UC1", scale)
                        c_ns = stamp_to_ns(msg.header.stamp)
                        d_ns = stamp_to_ns(msg.depth_header.stamp)
                    except Exception as exc:
                        decoder.damaged(t, exc)
                        continue
                    pair_id = f"{c_ns:019d}"
                    n = 1
                    while pair_id in used_ids:
                        pair_id = f"{c_ns:019d}_{n}"
                        n += 1
                    used_ids.add(pair_id)
                    folder.add(pair_id, frame.color, depth, scale,
                               {"color_stamp_ns": c_ns, "depth_stamp_ns": d_ns, "bag_time_ns": t})
                    codecs.add((msg.codec, msg.model_id, msg.quality))
                    if intrinsics is None and len(msg.color_camera_info):
                        intrinsics = [list(map(float, msg.color_camera_info[0].k[i:i + 3]))
                                      for i in (0, 3, 6)]
                    stats.frames += 1
            finally:
                progress.close()
            _refuse_incomplete(opts, stats, topic)
            folder.meta.update({
                "dataset": f"decoded from {Path(inp).name} topic {topic} by rgbd-codec bag decompress",
                "depth_units": "uint16, value / depth_scale_per_m = metres, 0 = no measurement",
                "color_format": "lossless PNG of the decoded colour",
                "codecs": [{"codec": c, "model_id": m, "quality": q} for c, m, q in sorted(codecs)],
            })
            if intrinsics is not None:
                folder.meta["intrinsics"] = intrinsics
    finally:
        reader.close()
    return stats
