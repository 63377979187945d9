"""Hostile bags (issue 9, item 6): chunk and message bombs, forged record sizes, and damaged
messages between good ones.

The bombs are real files: the messages are real CompressedRGBD frames that ``bag compress``
wrote from the shared RGB-D data, re-packed into .mcap records written here byte by byte
(https://mcap.dev/spec) with one forged chunk, or a .db3 written by the project's own writer
with one forged row. Every refusal is checked in a separate process whose address space is
capped (RLIMIT_AS), so a reader that did decompress a bomb would fail, not swap, and whose
peak resident memory (its own VmHWM) is compared with a bound.
"""
from __future__ import annotations

import io
import os
import resource
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from rgbd_codec_ros.bag import msgdefs
from rgbd_codec_ros.bag.dataset import folder_to_bag

REPO = Path(__file__).resolve().parents[1]
MAGIC = b"\x89MCAP0\r\n"
MiB = 1 << 20
GiB = 1 << 30
#: address-space cap of the CLI processes that meet a bomb (a full bomb needs several GiB)
AS_LIMIT = int(1.5 * GiB)
#: what such a process may reach at its peak (Python + numpy + rosbags + the codec: ~150 MB)
RSS_BOUND = 400 * MiB
TOPIC_ARGS = ["--color-topic", "/camera/color/image_raw", "--depth-topic", "/camera/depth/image_raw"]


# ---------------------------------------------------------------------------- mcap records

def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<I", len(b)) + b


def _map(d: dict) -> bytes:
    body = b"".join(_str(k) + _str(v) for k, v in d.items())
    return struct.pack("<I", len(body)) + body


def _record(op: int, body: bytes) -> bytes:
    return struct.pack("<BQ", op, len(body)) + body


def _schema(sid: int, name: str, text: str) -> bytes:
    return _record(0x03, struct.pack("<H", sid) + _str(name) + _str("ros2msg") + _str(text))


def _channel(cid: int, sid: int, topic: str) -> bytes:
    return _record(0x04, struct.pack("<HH", cid, sid) + _str(topic) + _str("cdr")
                   + _map({"offered_qos_profiles": ""}))


def _message(cid: int, t: int, data: bytes) -> bytes:
    return _record(0x05, struct.pack("<HIQQ", cid, 0, t, t) + data)


def _zeros_zstd(nbytes: int) -> bytes:
    """A zstd stream of ``nbytes`` zero bytes, as concatenated 1 MiB frames (~50 bytes each)."""
    from backports import zstd

    frame = zstd.compress(bytes(MiB))
    full, rest = divmod(nbytes, MiB)
    return frame * full + (zstd.compress(bytes(rest)) if rest else b"")


def _zeros_lz4(nbytes: int) -> bytes:
    """One lz4 frame of ``nbytes`` zero bytes, compressed piece by piece (little memory)."""
    import lz4.frame

    comp = lz4.frame.LZ4FrameCompressor()
    out = [comp.begin()]
    block = bytes(MiB)
    left = nbytes
    while left:
        n = min(left, MiB)
        out.append(comp.compress(block[:n]))
        left -= n
    out.append(comp.flush())
    return b"".join(out)


class Chunk:
    """One chunk: its records (uncompressed), or a forged compressed body and declared size."""

    def __init__(self, start: int, end: int, records: bytes = b"", compression: str = "zstd",
                 body: bytes = None, declared: int = None, counts: dict = None):
        self.start, self.end, self.compression = start, end, compression
        if body is None:
            if compression == "zstd":
                from backports import zstd
                body = zstd.compress(records)
            elif compression == "lz4":
                import lz4.frame
                body = lz4.frame.compress(records)
            else:
                body = records
        self.body = body
        self.declared = len(records) if declared is None else declared
        self.counts = counts or {}          # channel id -> [log times] for the message index


def write_mcap(path: Path, schemas, channels, chunks, summary: bool = True) -> Path:
    """An MCAP file: header, the schema and channel records, ``chunks``, and (``summary``) a
    summary section with chunk indexes and statistics, the layout rosbag2 writes."""
    out = io.BytesIO()
    out.write(MAGIC)
    out.write(_record(0x01, _str("ros2") + _str("rgbd-codec-test")))
    for s in schemas:
        out.write(s)
    for c in channels:
        out.write(c)
    indexes = []
    msg_count = {}
    for ch in chunks:
        chunk_start = out.tell()
        out.write(_record(0x06, struct.pack("<QQQI", ch.start, ch.end, ch.declared, 0)
                          + _str(ch.compression) + struct.pack("<Q", len(ch.body)) + ch.body))
        chunk_len = out.tell() - chunk_start
        offsets = {}
        for cid, times in ch.counts.items():
            offsets[cid] = out.tell()
            entries = b"".join(struct.pack("<QQ", t, 0) for t in times)
            out.write(_record(0x07, struct.pack("<HI", cid, len(entries)) + entries))
            msg_count[cid] = msg_count.get(cid, 0) + len(times)
        index_len = out.tell() - chunk_start - chunk_len
        off_body = b"".join(struct.pack("<HQ", cid, o) for cid, o in offsets.items())
        indexes.append(_record(0x08, struct.pack("<QQQQ", ch.start, ch.end, chunk_start, chunk_len)
                               + struct.pack("<I", len(off_body)) + off_body
                               + struct.pack("<Q", index_len) + _str(ch.compression)
                               + struct.pack("<QQ", len(ch.body), ch.declared)))
    out.write(_record(0x0F, struct.pack("<I", 0)))
    summary_start = 0
    if summary:
        summary_start = out.tell()
        for s in schemas:
            out.write(s)
        for c in channels:
            out.write(c)
        for rec in indexes:
            out.write(rec)
        counts = b"".join(struct.pack("<HQ", cid, n) for cid, n in sorted(msg_count.items()))
        starts = [c.start for c in chunks] or [0]
        ends = [c.end for c in chunks] or [0]
        out.write(_record(0x0B, struct.pack("<QHIIIIQQ", sum(msg_count.values()), len(schemas),
                                            len(channels), 0, 0, len(chunks), min(starts),
                                            max(ends))
                          + struct.pack("<I", len(counts)) + counts))
    out.write(_record(0x02, struct.pack("<QQI", summary_start, 0, 0)))
    out.write(MAGIC)
    path.write_bytes(out.getvalue())
    return path


# ---------------------------------------------------------------------------- running the CLI

def run_capped(args, cwd: Path):
    """Run ``rgbd-codec ARGS`` in a process capped at AS_LIMIT of address space and 120 s of CPU;
    (exit code, stdout, stderr, peak resident bytes of that process)."""
    def limits():
        resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))
        resource.setrlimit(resource.RLIMIT_CPU, (120, 120))

    env = dict(os.environ, PYTHONPATH=str(REPO))
    out_path, err_path, hwm_path = cwd / ".stdout.txt", cwd / ".stderr.txt", cwd / ".vmhwm.txt"
    # The peak is the child's own VmHWM, written by the child at exit: ru_maxrss of a forked
    # child also counts the pages it shared with the (large, torch-laden) test process at fork.
    wrapper = ("import atexit, runpy, sys\n"
               f"def _hwm():\n    open({str(hwm_path)!r}, 'w').write("
               "[l for l in open('/proc/self/status') if l.startswith('VmHWM')][0])\n"
               "atexit.register(_hwm)\n"
               "sys.argv = ['rgbd-codec'] + sys.argv[1:]\n"
               "runpy.run_module('rgbd_codec_ros.cli', run_name='__main__')\n")
    with out_path.open("w") as out, err_path.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-c", wrapper, *map(str, args)],
                                stdout=out, stderr=err, env=env, cwd=str(cwd), preexec_fn=limits)
        _, status, _usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = out_path.read_text(), err_path.read_text()
    out_path.unlink()
    err_path.unlink()
    assert hwm_path.is_file(), f"the CLI did not exit normally ({proc.returncode}): {stderr[-500:]}"
    peak = int(hwm_path.read_text().split()[1]) * 1024      # "VmHWM:  12345 kB"
    hwm_path.unlink()
    return proc.returncode, stdout, stderr, peak


def error_lines(stderr: str):
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("warning: ")]


def leftovers(folder: Path):
    return sorted(p.name for p in folder.iterdir() if ".partial" in p.name)


def assert_refused(rc, stderr, rss, folder: Path, *needles, out=None):
    lines = error_lines(stderr)
    assert rc in (1, 2), stderr
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("rgbd-codec bag: error: "), stderr
    for n in needles:
        assert n in lines[0], lines[0]
    assert rss < RSS_BOUND, f"peak memory {rss / MiB:.0f} MiB"
    assert leftovers(folder) == []
    if out is not None:
        assert not (folder / out).exists()


# ---------------------------------------------------------------------------- the real frames

@pytest.fixture(scope="module")
def frames(tmp_path_factory, data_dir):
    """Four real CompressedRGBD messages (classical codec, 160x120, from 7-Scenes), as `bag
    compress` wrote them: [(log time, CDR bytes)], and the folder they live in."""
    from rosbags.rosbag2 import Reader

    from rgbd_codec_ros.cli import main

    d = tmp_path_factory.mktemp("hostile_bags")
    folder_to_bag(data_dir / "7scenes_kinect1", d / "raw.mcap", limit=4, start=10, downscale=4)
    with open(os.devnull, "w") as null:
        import contextlib
        with contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
            assert main(["bag", "compress", str(d / "raw.mcap"), str(d / "comp.mcap"), *TOPIC_ARGS,
                         "--drop-raw", "--no-progress"]) == 0
    with Reader(d / "comp.mcap") as reader:
        conns = [c for c in reader.connections if c.topic == "/rgbd/compressed"]
        msgs = [(t, bytes(x)) for _, t, x in reader.messages(connections=conns)]
    assert len(msgs) == 4
    return d, msgs


def forge(frames, name: str, bombs=(), at: int = 2, summary: bool = True,
          compression: str = "zstd") -> Path:
    """The real frames, one per chunk, with ``bombs`` (Chunk objects) inserted before frame ``at``."""
    d, msgs = frames
    text, _ = msgdefs.definition_and_hash(msgdefs.COMPRESSED_RGBD)
    chunks = [Chunk(t, t, _message(1, t, data), compression=compression, counts={1: [t]})
              for t, data in msgs]
    chunks[at:at] = list(bombs)
    return write_mcap(d / name, [_schema(1, msgdefs.COMPRESSED_RGBD, text)],
                      [_channel(1, 1, "/rgbd/compressed")], chunks, summary=summary)


def mid_time(frames, at: int = 2) -> int:
    _, msgs = frames
    return (msgs[at - 1][0] + msgs[at][0]) // 2


@pytest.mark.parametrize("compression", ["zstd", "lz4", ""])
def test_forged_files_read_like_the_original(frames, compression):
    """Control: the records written here are a valid bag (so a refusal below is the bomb's doing)."""
    d, _ = frames
    for summary in (True, False):
        path = forge(frames, f"plain_{compression or 'none'}_{int(summary)}.mcap", summary=summary,
                     compression=compression)
        rc, out, err, rss = run_capped(["bag", "info", path.name, "--json"], d)
        assert rc == 0, err
        assert '"messages": 4' in out
        rc, out, err, rss = run_capped(["bag", "decompress", path.name, path.stem + "_out.mcap",
                                        "--no-progress"], d)
        assert rc == 0, err
        assert "4 pairs decoded" in out and "0 skipped" in out


BOMBS = {
    # (compression, bytes the chunk decompresses to, bytes it declares, summary section)
    "zstd_declares_3GiB": ("zstd", 3 * GiB, 3 * GiB, True),
    "zstd_lies_1MiB_holds_3GiB": ("zstd", 3 * GiB, MiB, True),
    "lz4_lies_1MiB_holds_1GiB": ("lz4", GiB, MiB, True),
    "zstd_lies_unindexed": ("zstd", 3 * GiB, MiB, False),
}


@pytest.mark.parametrize("command", ["info", "decompress"])
@pytest.mark.parametrize("kind", sorted(BOMBS))
def test_chunk_bomb_is_refused_before_it_is_decompressed(frames, kind, command):
    """A ~100 kB .mcap whose chunk decompresses to gigabytes: one line, exit 2, under 400 MB
    (before: 8.2 GB and 277 s for `bag info` of a 4 GiB one), no output, no temporary."""
    d, _ = frames
    compression, actual, declared, summary = BOMBS[kind]
    body = _zeros_zstd(actual) if compression == "zstd" else _zeros_lz4(actual)
    t = mid_time(frames)
    bomb = Chunk(t, t, compression=compression, body=body, declared=declared, counts={1: [t]})
    path = forge(frames, f"bomb_{kind}.mcap", [bomb], summary=summary)
    assert path.stat().st_size < 5 * MiB
    args = ["bag", command, path.name] + (["out.mcap", "--no-progress"] if command == "decompress"
                                           else [])
    rc, _, err, rss = run_capped(args, d)
    why = "declares 3.0 GiB uncompressed, more than --max-chunk-bytes" if declared > MiB else \
        "decompresses to more than the 1.0 MiB it declares"
    assert_refused(rc, err, rss, d, "cannot read bag", why, "refused", out="out.mcap")


def test_overlapping_chunks_are_refused_together(frames):
    """Twelve chunks of 100 MiB each (under the limit one by one) over the same instant would be
    decompressed together by the time-ordered merge: refused by their sum."""
    d, _ = frames
    t = mid_time(frames)
    body = _zeros_zstd(100 * MiB)
    bombs = [Chunk(t, t, body=body, declared=100 * MiB, counts={1: [t]}) for _ in range(12)]
    path = forge(frames, "overlap.mcap", bombs)
    for command in (["bag", "info", path.name],
                    ["bag", "decompress", path.name, "--images", "pngs", "--no-progress"]):
        rc, _, err, rss = run_capped(command, d)
        assert_refused(rc, err, rss, d, "12 mcap chunks overlap in time", "1.2 GiB",
                       "--max-chunk-bytes", out="pngs")


def test_max_chunk_bytes_option(frames):
    """The limit is the user's: a plain bag with one frame per chunk is refused under a
    --max-chunk-bytes below the frames' size, read at one well above; a bad value is an
    argument error."""
    d, msgs = frames
    path = forge(frames, "plain_limit.mcap")
    smallest_k, largest_k = (min(len(data) for _, data in msgs) // 1024,
                             max(len(data) for _, data in msgs) // 1024 + 1)
    below = max(1, smallest_k // 2)
    rc, _, err, rss = run_capped(["bag", "info", path.name, "--max-chunk-bytes", f"{below}K"], d)
    assert_refused(rc, err, rss, d, f"more than --max-chunk-bytes {below}.0 KiB")
    rc, out, err, _ = run_capped(["bag", "decompress", path.name, "lim.db3", "--no-progress",
                                  "--max-chunk-bytes", f"{4 * largest_k}K"], d)
    assert rc == 0 and "4 pairs decoded" in out, err
    rc, _, err, _ = run_capped(["bag", "info", path.name, "--max-chunk-bytes", "lots"], d)
    assert rc == 2 and "--max-chunk-bytes" in err and "Traceback" not in err


def test_forged_record_lengths_and_indexes_are_refused(frames):
    """A record length past the end of the file, and a chunk index that lies about its chunk."""
    d, _ = frames
    plain = forge(frames, "plain_forged.mcap").read_bytes()
    # the header record (right after the magic) claims 2**62 bytes
    huge = bytearray(plain)
    huge[9:17] = struct.pack("<Q", 2**62)
    (d / "huge_record.mcap").write_bytes(huge)
    rc, _, err, rss = run_capped(["bag", "info", "huge_record.mcap"], d)
    assert_refused(rc, err, rss, d, "past the end of the file")
    # the chunk indexes say 1 KiB uncompressed where the chunks say more: rosbags would trust
    # the index; the mismatch is refused
    text, _ = msgdefs.definition_and_hash(msgdefs.COMPRESSED_RGBD)
    _, msgs = frames
    chunks = [Chunk(t, t, _message(1, t, data), counts={1: [t]}) for t, data in msgs]
    good = write_mcap(d / "index_lies.mcap", [_schema(1, msgdefs.COMPRESSED_RGBD, text)],
                      [_channel(1, 1, "/rgbd/compressed")], chunks)
    data = bytearray(good.read_bytes())
    first = chunks[0]
    real = struct.pack("<QQ", len(first.body), first.declared)
    pos = data.rindex(real)                 # in the first chunk index of the summary
    data[pos:pos + 16] = struct.pack("<QQ", len(first.body), 1024)
    good.write_bytes(data)
    rc, _, err, rss = run_capped(["bag", "info", good.name], d)
    assert_refused(rc, err, rss, d, "chunk index", "does not match")


def _db3_from(frames, name: str, compress_messages: bool):
    """A sqlite3 bag folder written by the project's writer from the real frames."""
    from rosbags.rosbag2 import CompressionFormat, CompressionMode

    from rgbd_codec_ros.bag.storage import AtomicBagWriter

    d, msgs = frames
    text, rihs = msgdefs.definition_and_hash(msgdefs.COMPRESSED_RGBD)
    bag = AtomicBagWriter(d / name, storage="sqlite3")
    if compress_messages:
        bag.writer.set_compression(CompressionMode.MESSAGE, CompressionFormat.ZSTD)
    with bag:
        conn = bag.add_connection("/rgbd/compressed", msgdefs.COMPRESSED_RGBD, text, rihs)
        for t, data in msgs:
            bag.write(conn, t, data)
    return d / name, d / name / f"{name}.db3"


def test_db3_message_bomb_is_refused(frames):
    """A bag with per-message zstd compression whose third message is 3 GiB of zeros in ~150 kB."""
    d, _ = frames
    folder, db3 = _db3_from(frames, "msgzstd", compress_messages=True)
    rc, out, err, _ = run_capped(["bag", "decompress", folder.name, "msgzstd_ok.mcap",
                                  "--no-progress"], d)
    assert rc == 0 and "4 pairs decoded" in out, err       # control: it reads as written
    con = sqlite3.connect(db3)
    con.execute("UPDATE messages SET data = ? WHERE id = 3", (_zeros_zstd(3 * GiB),))
    con.commit()
    con.close()
    for command in (["bag", "info", folder.name],
                    ["bag", "decompress", folder.name, "out.mcap", "--no-progress"]):
        rc, _, err, rss = run_capped(command, d)
        assert_refused(rc, err, rss, d, "zstd-compressed message decompresses to more than "
                       "--max-chunk-bytes 256.0 MiB", out="out.mcap")


def test_db3_rows_larger_than_the_limit_or_the_file_are_refused(frames):
    d, _ = frames
    folder, db3 = _db3_from(frames, "rows", compress_messages=False)
    rc, _, err, rss = run_capped(["bag", "info", folder.name, "--max-chunk-bytes", "4K"], d)
    assert_refused(rc, err, rss, d, "message 1 on /rgbd/compressed holds",
                   "more than --max-chunk-bytes 4.0 KiB")
    # the bare .db3 file of a bag, with one oversized row
    con = sqlite3.connect(db3)
    con.execute("UPDATE messages SET data = zeroblob(3000000) WHERE id = 2")
    con.commit()
    con.close()
    rc, _, err, rss = run_capped(["bag", "decompress", str(db3), "out.mcap", "--no-progress",
                                  "--max-chunk-bytes", "2M"], d)
    assert_refused(rc, err, rss, d, "message 2 on /rgbd/compressed holds 2.9 MiB",
                   "more than --max-chunk-bytes 2.0 MiB", out="out.mcap")


def test_bad_messages_between_good_ones(frames):
    """Forged CompressedRGBD messages (a random payload, an unknown codec, garbage CDR, a
    payload cut short) between real ones: the four good frames come out, the four bad ones are
    counted, in a bag and in a folder of PNGs."""
    import dataclasses

    import numpy as np

    from rgbd_codec_ros.bag import messages
    from rgbd_codec_ros.bag.storage import AtomicBagWriter

    d, msgs = frames
    rng = np.random.default_rng(9)
    good = messages.deserialize(msgs[0][1], msgdefs.COMPRESSED_RGBD)
    forged = [
        dataclasses.replace(good, payload=rng.integers(0, 256, good.payload.size, dtype=np.uint8)),
        dataclasses.replace(good, codec="no-such-codec"),
    ]
    bad = [messages.serialize(m, msgdefs.COMPRESSED_RGBD) for m in forged]
    bad.append(bytes(rng.integers(0, 256, 3000, dtype=np.uint8)))
    bad.append(messages.serialize(dataclasses.replace(
        good, payload=np.asarray(good.payload)[:100]), msgdefs.COMPRESSED_RGBD))
    text, rihs = msgdefs.definition_and_hash(msgdefs.COMPRESSED_RGBD)
    with AtomicBagWriter(d / "mixed.mcap", single_file=True) as bag:
        conn = bag.add_connection("/rgbd/compressed", msgdefs.COMPRESSED_RGBD, text, rihs)
        for i, (t, data) in enumerate(msgs):
            bag.write(conn, t, data)
            bag.write(conn, t + 1, bad[i])
    rc, out, err, _ = run_capped(["bag", "decompress", "mixed.mcap", "mixed_out.mcap",
                                  "--no-progress"], d)
    assert rc == 0, err
    assert "4 pairs decoded" in out and "4 skipped" in out
    assert err.count("; skipped") == 4 and "Traceback" not in err
    from rosbags.rosbag2 import Reader
    with Reader(d / "mixed_out.mcap") as reader:
        times = sorted(t for c, t, _ in reader.messages() if c.topic.endswith("color/image_raw"))
    assert times == [t for t, _ in msgs]
    rc, out, err, _ = run_capped(["bag", "decompress", "mixed.mcap", "--images", "mixed_png",
                                  "--no-progress"], d)
    assert rc == 0 and "4 pairs decoded" in out and "4 skipped" in out, err
    assert len(list((d / "mixed_png" / "color").iterdir())) == 4
    rc, _, err, _ = run_capped(["bag", "decompress", "mixed.mcap", "strict.mcap", "--strict",
                                "--no-progress"], d)
    assert rc == 2 and not (d / "strict.mcap").exists() and leftovers(d) == []
