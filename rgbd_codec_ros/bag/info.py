"""``bag info``: what a bag holds, and how well its CompressedRGBD topics compress.

For every topic: type, message count, RIHS01 hash. For CompressedRGBD topics
also: codec / model / quality seen, frame rate from the header stamps, mean
and 95th-percentile bit rate, and the compression ratio against the raw
images the messages stand for.

Bit rates: with ``n`` messages whose colour stamps span ``T`` seconds the
frame period is ``T / (n - 1)``; the mean rate is the mean serialized message
size divided by that period, and the p95 rate is the 95th-percentile message
size divided by it (the rate a link must carry for the larger frames).
The raw size of a message is ``width * height * bytes per pixel`` of its
colour and depth encodings.

GOP structure (temporal colour codecs predict frames from earlier ones): keyframes and their
share, the length of each GOP (a keyframe and the predicted frames after it, as present in the
bag), frames before the first keyframe (a recording that joined a running stream), and gaps in
the sender's ``sequence`` numbers (frames lost before they reached the bag). Format 1 messages
have neither field: they are all keyframes, without sequence numbers.
"""
from __future__ import annotations

import collections
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from rgbd_codec_ros.bag import messages, msgdefs
from rgbd_codec_ros.bag.storage import (
    bag_bytes, input_storage, iter_messages, open_reader, stored_type_hashes)
from rgbd_codec_ros.sync import stamp_to_ns

_BYTES_PER_PIXEL = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "16UC1": 2, "32FC1": 4}


_SEQUENCE_MOD = 1 << 32     # CompressedRGBD.sequence is a uint32 that wraps


def gop_structure(frames: Sequence[Tuple[bool, Optional[int]]]) -> Dict[str, Any]:
    """GOP figures of a stream from its messages' (keyframe, sequence) in bag order."""
    first_key = next((i for i, (key, _) in enumerate(frames) if key), len(frames))
    lengths: List[int] = []
    for key, _ in frames[first_key:]:
        if key:
            lengths.append(1)
        else:
            lengths[-1] += 1
    gaps = missing = steps_back = 0
    previous = None
    for _, seq in frames:
        if seq is not None and previous is not None and seq != (previous + 1) % _SEQUENCE_MOD:
            ahead = (seq - previous) % _SEQUENCE_MOD
            if 0 < ahead < _SEQUENCE_MOD // 2:
                gaps += 1
                missing += ahead - 1
            else:   # a duplicate, a late copy, or a sender that restarted
                steps_back += 1
        previous = seq
    keyframes = sum(1 for key, _ in frames if key)
    return {
        "keyframes": keyframes,
        "keyframe_share": keyframes / len(frames) if frames else 0.0,
        "gops": len(lengths),
        "gop_length_mean": sum(lengths) / len(lengths) if lengths else None,
        "gop_length_min": min(lengths, default=None),
        "gop_length_max": max(lengths, default=None),
        "frames_before_first_keyframe": first_key,
        "with_sequence": sum(1 for _, seq in frames if seq is not None),
        "sequence_gaps": gaps,
        "frames_missing": missing,
        "sequence_steps_back": steps_back,
    }


def _compressed_stats(reader, conns) -> Dict[str, Any]:
    sizes, payloads, raw, stamps = [], [], [], []
    codecs = collections.Counter()
    versions = collections.Counter()
    frames = []
    unreadable = 0
    shapes = collections.Counter()
    for conn, _, data in iter_messages(reader, conns):
        try:
            msg = messages.deserialize(data, msgdefs.read_type(conn))
            c_bpp = _BYTES_PER_PIXEL[msg.color_encoding]
            d_bpp = _BYTES_PER_PIXEL[msg.depth_encoding]
        except (ValueError, KeyError):
            unreadable += 1
            continue
        sizes.append(len(data))
        payloads.append(len(msg.payload))
        raw.append(int(msg.color_width) * int(msg.color_height) * c_bpp
                   + int(msg.depth_width) * int(msg.depth_height) * d_bpp)
        stamps.append(stamp_to_ns(msg.header.stamp))
        codecs[(msg.codec, msg.model_id, msg.quality)] += 1
        versions[int(msg.format_version)] += 1
        frames.append(messages.stream_fields(msg))
        shapes[(int(msg.color_width), int(msg.color_height), msg.color_encoding,
                msg.depth_encoding)] += 1
    out: Dict[str, Any] = {
        "messages": len(sizes), "unreadable": unreadable,
        "codecs": [{"codec": c, "model_id": m, "quality": q, "messages": n}
                   for (c, m, q), n in codecs.most_common()],
        "images": [{"width": w, "height": h, "color_encoding": ce, "depth_encoding": de, "messages": n}
                   for (w, h, ce, de), n in shapes.most_common()],
        "format_versions": {str(v): n for v, n in sorted(versions.items())},
        "gop": gop_structure(frames),
    }
    if not sizes:
        return out
    sizes_a = np.asarray(sizes, dtype=np.float64)
    out.update({
        "bytes_total": int(sizes_a.sum()),
        "bytes_mean": float(sizes_a.mean()),
        "bytes_p95": float(np.percentile(sizes_a, 95)),
        "payload_bytes_mean": float(np.mean(payloads)),
        "raw_bytes_total": int(sum(raw)),
        "compression_ratio": float(sum(raw) / sizes_a.sum()),
    })
    span = (max(stamps) - min(stamps)) / 1e9
    if len(stamps) > 1 and span > 0:
        period = span / (len(stamps) - 1)
        out.update({
            "fps": 1.0 / period,
            "kbit_s_mean": out["bytes_mean"] * 8 / period / 1000.0,
            "kbit_s_p95": out["bytes_p95"] * 8 / period / 1000.0,
        })
    return out


def bag_info(path) -> Dict[str, Any]:
    """Everything ``bag info`` prints, as a dict (also what ``--json`` prints)."""
    reader = open_reader(path)
    try:
        info: Dict[str, Any] = {
            "path": str(path),
            "storage": input_storage(path),
            "bytes": bag_bytes(path),
            "messages": reader.message_count,
            "start_ns": reader.start_time if reader.message_count else None,
            "end_ns": reader.end_time if reader.message_count else None,
            "duration_s": (reader.duration / 1e9) if reader.message_count else 0.0,
            "topics": [],
        }
        hashes = stored_type_hashes(path)
        by_topic = collections.OrderedDict()
        for c in reader.connections:
            by_topic.setdefault(c.topic, []).append(c)
        for topic, conns in by_topic.items():
            entry = {"topic": topic, "type": conns[0].msgtype,
                     "messages": sum(c.msgcount for c in conns),
                     "type_hash": conns[0].digest or hashes.get(topic, "")}
            if conns[0].msgtype == msgdefs.COMPRESSED_RGBD:
                entry["compressed"] = _compressed_stats(reader, conns)
            info["topics"].append(entry)
    finally:
        reader.close()
    return info


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _format_gop(g: Dict[str, Any]) -> List[str]:
    text = f"      GOP: {_plural(g['keyframes'], 'keyframe')} ({100 * g['keyframe_share']:.1f} %)"
    if g["gops"]:
        text += (f", length mean {g['gop_length_mean']:.1f} min {g['gop_length_min']} "
                 f"max {g['gop_length_max']}")
    text += f"; {_plural(g['frames_before_first_keyframe'], 'frame')} before the first keyframe"
    if not g["with_sequence"]:
        return [text, "      sequence: none (format 1 messages)"]
    seq = (f"      sequence: {_plural(g['sequence_gaps'], 'gap')} "
           f"({_plural(g['frames_missing'], 'frame')} missing)")
    if g["sequence_steps_back"]:
        seq += f", {_plural(g['sequence_steps_back'], 'step')} back (duplicates or a restart)"
    return [text, seq]


def format_info(info: Dict[str, Any]) -> str:
    lines = [
        f"Bag:       {info['path']} ({info['storage']}, {info['bytes'] / 1e6:.2f} MB)",
        f"Messages:  {info['messages']}",
        f"Duration:  {info['duration_s']:.3f} s",
    ]
    if info["start_ns"] is not None:
        lines.append(f"Start/end: {info['start_ns'] / 1e9:.6f} / {info['end_ns'] / 1e9:.6f} s")
    lines.append("Topics:")
    width = max((len(t["topic"]) for t in info["topics"]), default=5)
    for t in info["topics"]:
        lines.append(f"  {t['topic']:<{width}}  {t['messages']:>7} msgs  {t['type']}")
        c = t.get("compressed")
        if not c:
            continue
        for codec in c["codecs"]:
            lines.append(f"      codec {codec['codec']!r} model {codec['model_id'] or '-'!r} "
                         f"quality {codec['quality']!r}: {codec['messages']} msgs")
        for im in c["images"]:
            lines.append(f"      images {im['width']}x{im['height']} {im['color_encoding']} + "
                         f"{im['depth_encoding']}: {im['messages']} msgs")
        if c.get("messages"):
            lines.append("      format version " + ", ".join(
                f"{v}: {n} msgs" for v, n in c["format_versions"].items()))
            lines.extend(_format_gop(c["gop"]))
            lines.append(f"      size mean {c['bytes_mean'] / 1e3:.1f} kB, p95 {c['bytes_p95'] / 1e3:.1f} kB"
                         f" per message; ratio vs raw {c['compression_ratio']:.1f}:1")
        if "fps" in c:
            lines.append(f"      {c['fps']:.2f} fps: mean {c['kbit_s_mean']:.0f} kbit/s, "
                         f"p95 {c['kbit_s_p95']:.0f} kbit/s")
        elif c.get("messages"):
            lines.append("      bit rate: n/a (fewer than two distinct stamps)")
        if c["unreadable"]:
            lines.append(f"      {c['unreadable']} unreadable messages")
        lines.append(f"      type hash {t['type_hash']}")
    return "\n".join(lines)
