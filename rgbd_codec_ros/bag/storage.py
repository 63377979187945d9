"""Opening rosbag2 bags for reading within bounded memory, and writing new ones safely.

Input: a rosbag2 directory (with metadata.yaml), or a bare ``.db3`` / ``.mcap``
file. Output: a rosbag2 directory, or a bare ``.mcap`` / ``.db3`` file where
the output name ends in one of those suffixes.

Reading is bounded (bags may come from anyone). Before rosbags reads a storage
file, its records are checked here:

* ``.mcap``: every record must lie inside the file; every chunk must declare
  at most ``max_chunk_bytes`` uncompressed (default 256 MiB, ``--max-chunk-bytes``
  of the bag commands), chunks whose time ranges overlap (which the reader holds
  decompressed together) must stay under that limit in sum, and every chunk
  index must agree with the chunk it points at. While reading, a chunk that
  decompresses to more than it declared is refused before the excess is
  allocated (the decompressor is given the declared size as its output limit).
* ``.db3``: no stored message may be larger than the limit, nor larger than the
  file itself (a forged record); messages of a bag with per-message zstd
  compression may not decompress to more than the limit.

A refused bag is a :class:`BagLimitError` (a ``CodecError``): one line saying what
is wrong, raised before the memory is allocated. ``iter_messages`` turns every
other failure of a damaged file into a ``CodecError`` as well.

Writing is atomic: the output is built under a hidden temporary name in the same
directory (``.<name>.pid<pid>.<random>.partial``) and renamed into place only when
complete; any failure (a full disk, a read-only folder, a codec exception,
Ctrl-C, SIGTERM in the CLI) removes the temporary, and a temporary left by a
process that died (SIGKILL) is removed by the next run writing the same output.
An output is never one of the inputs, nor a folder holding an input, nor inside
an input folder; ``--force`` replaces only what the tool itself would write (a
rosbag2 bag folder, a file with the bag's suffix, or a ``--images`` folder).
Write failures are :class:`OutputError`: ``cannot write OUT: <reason>``.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import struct
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from rgbd_codec_ros.codec.base import CodecError

STORAGES = ("sqlite3", "mcap")
_SUFFIX = {"sqlite3": ".db3", "mcap": ".mcap"}

#: default bound on one decompressed mcap chunk (and on chunks held at once, and on one .db3
#: message): 256 MiB
DEFAULT_MAX_CHUNK_BYTES = 256 * 2**20
_limits = {"max_chunk_bytes": DEFAULT_MAX_CHUNK_BYTES}
#: metadata.yaml / embedded metadata larger than this is not read
_MAX_METADATA_BYTES = 16 * 2**20

MCAP_MAGIC = b"\x89MCAP0\r\n"


class BagLimitError(CodecError):
    """A bag declares or holds more than the reading limits allow (a bomb or a forged file)."""


class OutputError(CodecError):
    """An output could not be written (read-only folder, full disk, ...)."""

    def __init__(self, out, reason):
        if isinstance(reason, OSError) and reason.strerror:
            reason = reason.strerror
        super().__init__(f"cannot write {out}: {reason}")
        self.out = out


def set_max_chunk_bytes(n: Optional[int]) -> None:
    """Set the process-wide bound on decompressed chunk / message bytes (None: the default)."""
    n = DEFAULT_MAX_CHUNK_BYTES if n is None else int(n)
    if n < 1:
        raise CodecError(f"max_chunk_bytes must be >= 1, got {n}")
    _limits["max_chunk_bytes"] = n


def max_chunk_bytes() -> int:
    return _limits["max_chunk_bytes"]


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _limit_text() -> str:
    return f"--max-chunk-bytes {_size(max_chunk_bytes())}"


# ------------------------------------------------------------------ bounded decompression

def _bounded_decompress(data, size: int, new_decompressor, what: str, too_big: str) -> bytes:
    """Decompress concatenated frames into at most ``size`` bytes, refusing any more.

    The decompressor is never asked for more than ``size + 1`` bytes, so a bomb
    costs at most its declared size."""
    pieces: List[bytes] = []
    total = 0
    rest = bytes(data)
    while True:
        d = new_decompressor()
        piece = d.decompress(rest, max_length=size - total + 1)
        while True:
            pieces.append(piece)
            total += len(piece)
            if total > size:
                raise BagLimitError(f"{what} decompresses to more than {too_big}; refused "
                                    "(a decompression bomb or a damaged bag)")
            if d.eof or d.needs_input or not piece:
                break
            piece = d.decompress(b"", max_length=size - total + 1)
        if not d.eof:
            raise CodecError(f"{what}: compressed data is truncated")
        rest = d.unused_data or b""
        if not rest:
            break
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _zstd_module():
    try:
        from compression import zstd   # Python >= 3.14
    except ImportError:
        from backports import zstd
    return zstd


def _chunk_decompressor(kind: str):
    def run(data, size):
        limit = max_chunk_bytes()
        if size > limit:
            raise BagLimitError(f"an mcap chunk declares {_size(size)} uncompressed, more than "
                                f"{_limit_text()}; refused")
        if kind == "zstd":
            new = _zstd_module().ZstdDecompressor
        else:
            import lz4.frame
            new = lz4.frame.LZ4FrameDecompressor
        return _bounded_decompress(data, size, new, f"an mcap {kind} chunk",
                                   f"the {_size(size)} it declares")
    return run


class _BoundedZstd:
    """Stands in for the zstd module in rosbags' reader: per-message decompression is bounded."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def decompress(self, data, *args, **kwargs):
        return _bounded_decompress(data, max_chunk_bytes(), self._real.ZstdDecompressor,
                                   "a zstd-compressed message", _limit_text())


_hooks_installed = False


def _install_hooks() -> None:
    """Bound rosbags' chunk and message decompression (its module-level decompressor hooks)."""
    global _hooks_installed
    if _hooks_installed:
        return
    from rosbags.rosbag2 import reader as rb_reader
    from rosbags.rosbag2 import storage_mcap

    storage_mcap.DECOMPRESSORS["zstd"] = _chunk_decompressor("zstd")
    storage_mcap.DECOMPRESSORS["lz4"] = _chunk_decompressor("lz4")
    if not isinstance(rb_reader.zstd, _BoundedZstd):
        rb_reader.zstd = _BoundedZstd(rb_reader.zstd)
    _hooks_installed = True


# ------------------------------------------------------------------ checking storage files

class McapScan:
    """What a walk over an .mcap's top-level records found."""

    def __init__(self):
        self.chunks: Dict[int, Tuple[str, int, int]] = {}   # offset -> (compression, csize, usize)
        self.metadata: List[Tuple[int, int]] = []           # (offset, length) of metadata records


def scan_mcap(path, limit: Optional[int] = None) -> Optional[McapScan]:
    """Walk the records of an .mcap without reading their bodies; raise BagLimitError /
    CodecError for a record that runs past the end of the file or a chunk over ``limit``.
    None if the file is not an MCAP file at all (the reader then says why)."""
    path = Path(path)
    size = path.stat().st_size
    scan = McapScan()
    with path.open("rb") as f:
        if size < 8 + 9 + 20 + 8 or f.read(8) != MCAP_MAGIC:
            return None
        f.seek(size - 8 - 29)
        footer = f.read(29 + 8)
        if footer[-8:] != MCAP_MAGIC or footer[0] != 0x02:
            return None
        (summary_start,) = struct.unpack_from("<Q", footer, 9)
        pos, end = 8, size - 8
        summary_ok = summary_start == 0
        while pos < end:
            f.seek(pos)
            head = f.read(9)
            if len(head) < 9:
                raise CodecError(f"{path.name}: truncated mcap record at offset {pos}")
            op, length = struct.unpack("<BQ", head)
            body = pos + 9
            if length > end - body:
                raise BagLimitError(f"{path.name}: mcap record at offset {pos} (op 0x{op:02x}) "
                                    f"claims {length} bytes, past the end of the file; refused")
            if pos == summary_start:
                summary_ok = True
            if op == 0x06:
                scan.chunks[pos] = _chunk_header(f, path, pos, length, limit)
            elif op == 0x0C:
                scan.metadata.append((body, length))
            pos = body + length
        if not summary_ok:
            raise CodecError(f"{path.name}: the mcap footer's summary offset {summary_start} is "
                             "not the start of a record")
    return scan


def _chunk_header(f, path: Path, pos: int, length: int, limit: Optional[int]):
    head = f.read(min(length, 32))
    if len(head) < 32:
        raise CodecError(f"{path.name}: mcap chunk at offset {pos} is too short")
    _, _, usize, _, clen = struct.unpack("<QQQII", head)
    if clen > 64 or 32 + clen + 8 > length:
        raise CodecError(f"{path.name}: mcap chunk at offset {pos} has a malformed header")
    compression = f.read(clen).decode("utf-8", "replace")
    (csize,) = struct.unpack("<Q", f.read(8))
    if csize > length - (32 + clen + 8):
        raise BagLimitError(f"{path.name}: mcap chunk at offset {pos} claims {csize} compressed "
                            "bytes, more than its record holds; refused")
    if limit is not None and usize > limit:
        raise BagLimitError(f"{path.name}: mcap chunk at offset {pos} declares {_size(usize)} "
                            f"uncompressed, more than {_limit_text()}; refused")
    return compression, csize, usize


def check_chunk_indexes(path, chunk_infos: Sequence[Any], scan: McapScan, limit: int) -> None:
    """The chunk indexes rosbags will use must match real chunks, and the chunks that overlap
    in time (held decompressed together while merging) must fit in ``limit`` together."""
    name = Path(path).name
    events = []
    for c in chunk_infos:
        rec = scan.chunks.get(c.chunk_start_offset)
        if rec is None or rec != (c.compression, c.compressed_size, c.uncompressed_size):
            raise CodecError(f"{name}: an mcap chunk index (offset {c.chunk_start_offset}) does "
                             "not match the chunk it points at; refused (forged or damaged bag)")
        start, stop = c.message_start_time, max(c.message_end_time, c.message_start_time)
        events.append((start, 0, c.uncompressed_size))
        events.append((stop, 1, -c.uncompressed_size))
    held = peak = 0
    open_now = most = 0
    for _, kind, delta in sorted(events):
        held += delta
        open_now += 1 if kind == 0 else -1
        if held > peak:
            peak, most = held, open_now
    if peak > limit:
        raise BagLimitError(f"{name}: {most} mcap chunks overlap in time and would be held "
                            f"decompressed together ({_size(peak)}), more than {_limit_text()}; "
                            "refused")


def check_db3(path, limit: int) -> None:
    """Refuse a .db3 holding a message larger than ``limit`` or than the file itself."""
    path = Path(path)
    size = path.stat().st_size
    bound = min(limit, size)
    try:
        con = sqlite3.connect(path.resolve().as_uri() + "?mode=ro&immutable=1", uri=True)
    except sqlite3.Error:
        return      # rosbags says what is wrong with it
    try:
        (largest,) = con.execute("SELECT max(length(data)) FROM messages").fetchone()
        if largest is None or largest <= bound:
            return
        mid, topic, n = con.execute(
            "SELECT messages.id, topics.name, length(messages.data) FROM messages LEFT JOIN "
            "topics ON topics.id = messages.topic_id WHERE length(messages.data) > ? LIMIT 1",
            (bound,)).fetchone()
    except sqlite3.Error:
        return      # not a rosbag2 database: rosbags says so
    finally:
        con.close()
    why = (f"more than the file itself ({size} bytes): a forged or damaged database" if n > size
           else f"more than {_limit_text()}")
    raise BagLimitError(f"{path.name}: message {mid} on {topic} holds {_size(n)}, {why}; refused")


_reader_class = None


def _checked_reader_class():
    """rosbags' Reader whose storage plugins check each file (scan_mcap / check_db3) first."""
    global _reader_class
    if _reader_class is not None:
        return _reader_class
    from rosbags.rosbag2 import Reader
    from rosbags.rosbag2.reader import DirectoryReader
    from rosbags.rosbag2.storage_mcap import McapReader
    from rosbags.rosbag2.storage_sqlite3 import Sqlite3Reader

    class CheckedMcapReader(McapReader):
        def open(self) -> None:
            limit = max_chunk_bytes()
            scan = scan_mcap(self.path, limit)
            super().open()
            if scan is not None:
                try:
                    check_chunk_indexes(self.path, self.chunks, scan, limit)
                except BaseException:
                    self.close()
                    raise

    class CheckedSqlite3Reader(Sqlite3Reader):
        def open(self) -> None:
            check_db3(self.path, max_chunk_bytes())
            super().open()

    class CheckedDirectoryReader(DirectoryReader):
        STORAGE_PLUGINS = {"mcap": CheckedMcapReader, "sqlite3": CheckedSqlite3Reader}

        def open(self) -> None:
            meta = self.path / "metadata.yaml"
            if meta.is_file() and meta.stat().st_size > _MAX_METADATA_BYTES:
                raise BagLimitError(f"{meta} is {_size(meta.stat().st_size)}, more than a "
                                    f"bag's metadata can be ({_size(_MAX_METADATA_BYTES)}); refused")
            super().open()

    class CheckedReader(Reader):
        STORAGE_PLUGINS = {"dir": CheckedDirectoryReader, ".mcap": CheckedMcapReader,
                           ".db3": CheckedSqlite3Reader}

    _reader_class = CheckedReader
    return CheckedReader


# ------------------------------------------------------------------ reading

def open_reader(path):
    """An open rosbags Reader, or CodecError saying what is wrong with ``path``.

    The storage files are checked first and decompression is bounded (see the module
    docstring; the limit is :func:`set_max_chunk_bytes`). Read the messages with
    :func:`iter_messages`, which reports a damaged file as a CodecError."""
    from rosbags.rosbag2.errors import ReaderError

    _install_hooks()
    path = Path(path)
    if not path.exists():
        raise CodecError(f"input bag {path} does not exist")
    if path.is_dir() and not (path / "metadata.yaml").is_file():
        storage_files = sorted(path.glob("*.mcap")) + sorted(path.glob("*.db3"))
        if len(storage_files) == 1:
            path = storage_files[0]
        else:
            raise CodecError(
                f"{path} is a directory without metadata.yaml: not a rosbag2 bag "
                "(give the bag directory, or a single .db3/.mcap file)")
    if path.is_file() and path.suffix not in (".db3", ".mcap"):
        raise CodecError(f"{path}: not a rosbag2 bag (expected a bag directory, .db3 or .mcap file)")
    try:
        reader = _checked_reader_class()(path)
        reader.open()
    except CodecError as exc:
        text = str(exc)
        if text.startswith(f"{path.name}: "):     # a bare file: its name is said once
            text = text[len(path.name) + 2:]
        raise type(exc)(f"cannot read bag {path}: {text}") from exc
    except (ReaderError, OSError, ValueError, KeyError) as exc:
        raise CodecError(f"cannot read bag {path}: {exc}") from exc
    except Exception as exc:
        raise CodecError(f"cannot read bag {path}: {type(exc).__name__}: {exc}") from exc
    return reader


def iter_messages(reader, connections: Optional[Iterable[Any]] = None):
    """(connection, time, data) of an open reader; a damaged or refused file is a CodecError."""
    from rosbags.rosbag2.errors import ReaderError

    it = reader.messages() if connections is None else reader.messages(connections=connections)
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except CodecError as exc:
            raise type(exc)(f"cannot read bag {reader.path}: {exc}") from exc
        except ReaderError as exc:
            raise CodecError(f"cannot read bag {reader.path}: {exc}") from exc
        except Exception as exc:
            raise CodecError(f"cannot read bag {reader.path}: {type(exc).__name__}: {exc}") from exc
        yield item


def input_storage(path) -> str:
    """'sqlite3' or 'mcap' for an input bag."""
    path = Path(path)
    if path.is_file():
        return "mcap" if path.suffix == ".mcap" else "sqlite3"
    files = list(path.glob("*.mcap"))
    return "mcap" if files else "sqlite3"


# ------------------------------------------------------------------ outputs

def resolve_output(out, storage: Optional[str], default_storage: str):
    """(final path, storage, single_file) for an output name and a --storage choice."""
    out = Path(out)
    single = out.suffix in (".mcap", ".db3")
    if single:
        implied = "mcap" if out.suffix == ".mcap" else "sqlite3"
        if storage and storage != implied:
            raise CodecError(
                f"output {out} ends in {out.suffix} but --storage {storage} was asked for; "
                f"name the output {out.with_suffix(_SUFFIX[storage])} or drop --storage")
        storage = implied
    storage = storage or default_storage
    if storage not in STORAGES:
        raise CodecError(f"unknown storage {storage!r}; use one of {', '.join(STORAGES)}")
    return out, storage, single


def refuse_input_as_output(out, inputs: Sequence[Any]) -> None:
    """CodecError if ``out`` is an input, a folder holding an input, or inside an input folder."""
    out = Path(out)
    real_out = Path(os.path.realpath(out))
    for inp in inputs:
        inp = Path(inp)
        if not inp.exists():
            continue
        real_in = Path(os.path.realpath(inp))
        same = real_out == real_in
        if not same and out.exists():
            try:
                same = os.path.samefile(out, inp)
            except OSError:
                same = False
        if same:
            raise CodecError(f"output {out} is the input {inp}; choose another output")
        if real_in.is_relative_to(real_out):
            raise CodecError(f"output {out} is a folder that holds the input {inp}; "
                             "choose another output")
        if real_in.is_dir() and real_out.is_relative_to(real_in):
            raise CodecError(f"output {out} is inside the input folder {inp}; "
                             "choose an output outside it")


_BAG_FILE_SUFFIXES = (".mcap", ".db3", ".db3-shm", ".db3-wal", ".db3-journal")


def not_replaceable(out: Path, kind: str) -> Optional[str]:
    """Why ``--force`` must not replace the existing ``out`` (None: it may).

    kind: 'bag file' (a .mcap/.db3 output), 'bag folder' (a rosbag2 directory), 'images'
    (a ``bag decompress --images`` folder), 'file' (any regular file)."""
    if out.is_symlink():
        return "is a symbolic link"
    if kind in ("bag file", "file"):
        return None if out.is_file() else "is not a regular file"
    if not out.is_dir():
        return "is not a folder"
    entries = list(out.iterdir())
    if kind == "bag folder":
        ok = (out / "metadata.yaml").is_file() and all(
            e.is_file() and not e.is_symlink()
            and (e.name == "metadata.yaml" or e.name.endswith(_BAG_FILE_SUFFIXES)) for e in entries)
        return None if ok else ("is not a rosbag2 bag folder (metadata.yaml and .db3/.mcap "
                                "files only)")
    if kind == "images":
        allowed = {"color", "depth", "meta.json", "index.csv"}
        ok = all(e.name in allowed and not e.is_symlink() for e in entries)
        for sub in ("color", "depth"):
            d = out / sub
            ok = ok and d.is_dir() and all(f.is_file() and not f.is_symlink() for f in d.iterdir())
        try:
            meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
            ok = ok and "rgbd-codec bag decompress" in str(meta.get("dataset", ""))
        except (OSError, ValueError, AttributeError):
            ok = False
        return None if ok else "is not a folder written by `bag decompress --images`"
    raise ValueError(f"unknown output kind {kind!r}")


def check_output(out: Path, force: bool, kind: Optional[str] = None,
                 inputs: Sequence[Any] = ()) -> None:
    """Refuse an output that is an input, an existing output unless force (and with force,
    anything the tool would not have written itself), and a missing parent folder."""
    out = Path(out)
    if kind is None:
        kind = "bag file" if out.suffix in (".mcap", ".db3") else "bag folder"
    refuse_input_as_output(out, inputs)
    if out.exists() or out.is_symlink():
        if not force:
            raise CodecError(f"output {out} exists; pass --force to replace it")
        reason = not_replaceable(out, kind)
        if reason:
            raise CodecError(f"output {out} exists and {reason}: --force replaces only what this "
                             "tool writes; remove it yourself or choose another output")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise CodecError(f"output folder {parent} does not exist")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:     # e.g. another user's process
        return True
    return True


def remove_stale_partials(out: Path, suffix: str = ".partial") -> None:
    """Remove temporaries ``.<name>.pid<pid>.<random><suffix>`` of ``out`` left by writer
    processes that no longer run (killed, or crashed in native code)."""
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    prefix = f".{out.name}."
    try:
        entries = list(parent.iterdir())
    except OSError:
        return
    for e in entries:
        name = e.name
        if not (name.startswith(prefix) and name.endswith(suffix)):
            continue
        tag = name[len(prefix):-len(suffix)].split(".", 1)[0]
        pid = tag[3:]
        if tag.startswith("pid") and pid.isdigit() and int(pid) != os.getpid() \
                and not _pid_alive(int(pid)):
            if e.is_dir() and not e.is_symlink():
                shutil.rmtree(e, ignore_errors=True)
            else:
                try:
                    e.unlink()
                except OSError:
                    pass


def make_partial_dir(out: Path) -> Path:
    """A private temporary folder beside ``out`` (OutputError if the folder is not writable)."""
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    remove_stale_partials(out)
    try:
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.pid{os.getpid()}.", suffix=".partial",
                                     dir=parent))
    except OSError as exc:
        raise OutputError(out, exc) from exc


def replace_output(src: Path, out: Path, force: bool, kind: str, inputs: Sequence[Any] = (),
                   trash_dir: Optional[Path] = None) -> None:
    """Move the finished ``src`` to ``out``; an existing ``out`` (checked again) is moved aside
    first and restored if the move fails."""
    refuse_input_as_output(out, inputs)
    aside = None
    if out.exists() or out.is_symlink():
        if not force:   # appeared while we were writing
            raise CodecError(f"output {out} appeared while writing; not replaced")
        reason = not_replaceable(out, kind)
        if reason:
            raise CodecError(f"output {out} appeared while writing and {reason}; not replaced")
        holder = trash_dir if trash_dir is not None else make_partial_dir(out)
        aside = holder / ".replaced"
        try:
            os.replace(out, aside)
        except OSError as exc:
            if trash_dir is None:
                _remove(holder)
            raise OutputError(out, exc) from exc
    try:
        os.replace(src, out)
    except OSError as exc:
        if aside is not None:
            try:
                os.replace(aside, out)
            except OSError:
                pass
        raise OutputError(out, exc) from exc
    finally:
        if aside is not None:
            _remove(aside)
            if trash_dir is None:
                _remove(holder)


class AtomicBagWriter:
    """A rosbags Writer that appears under its final name only when closed successfully.

    Use as a context manager; on an exception (KeyboardInterrupt included) the
    partial bag is deleted and the final name is left untouched. ``inputs``: the
    bags / folders being read, which the output must not be or overwrite.
    Failures to write are :class:`OutputError`.
    """

    def __init__(self, out, storage: str = "mcap", force: bool = False, single_file: bool = False,
                 version: int = 9, inputs: Sequence[Any] = ()):
        from rosbags.rosbag2 import StoragePlugin, Writer

        self.out = Path(out)
        self.storage = storage
        self.force = force
        self.single_file = single_file
        self.inputs = tuple(inputs)
        self.kind = "bag file" if single_file else "bag folder"
        check_output(self.out, force, self.kind, self.inputs)
        self._tmpdir = make_partial_dir(self.out)
        bag_name = self.out.stem if single_file else self.out.name
        self._bagdir = self._tmpdir / bag_name
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        try:
            self.writer = Writer(self._bagdir, version=version, storage_plugin=plugin)
        except BaseException:
            self._discard()
            raise
        self._connections: Dict[tuple, object] = {}
        self.committed = False

    def _failed(self, exc: BaseException) -> CodecError:
        from rosbags.rosbag2.errors import WriterError

        if isinstance(exc, (OSError, sqlite3.Error, WriterError)):
            return OutputError(self.out, exc)
        return None

    # -- writer API -------------------------------------------------------
    def __enter__(self) -> "AtomicBagWriter":
        try:
            self.writer.open()
        except BaseException as exc:
            self._discard()
            err = self._failed(exc)
            if err is not None:
                raise err from exc
            raise
        return self

    def add_connection(self, topic: str, msgtype: str, msgdef: str, rihs01: str,
                       qos: Sequence = ()):
        key = (topic, msgtype)
        conn = self._connections.get(key)
        if conn is None:
            try:
                conn = self.writer.add_connection(
                    topic, msgtype, msgdef=msgdef, rihs01=rihs01,
                    offered_qos_profiles=list(qos))
            except (OSError, sqlite3.Error) as exc:
                raise OutputError(self.out, exc) from exc
            self._connections[key] = conn
        return conn

    def write(self, connection, timestamp: int, data) -> None:
        try:
            self.writer.write(connection, int(timestamp), data)
        except (OSError, sqlite3.Error) as exc:
            raise OutputError(self.out, exc) from exc

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                self._commit()
            except BaseException as err:
                self._abort()
                self._discard()
                wrapped = self._failed(err)
                if wrapped is not None:
                    raise wrapped from err
                raise
        else:
            self._abort()
            self._discard()
        return False

    # -- internals ----------------------------------------------------------
    def _abort(self) -> None:
        if getattr(self.writer, "storage", None) is not None:
            try:
                self.writer.abort()
            except Exception:
                pass

    def _commit(self) -> None:
        self.writer.close()
        if self.single_file:
            src = self._bagdir / f"{self._bagdir.name}{_SUFFIX[self.storage]}"
        else:
            src = self._bagdir
        replace_output(src, self.out, self.force, self.kind, self.inputs, trash_dir=self._tmpdir)
        shutil.rmtree(self._tmpdir, ignore_errors=True)
        self.committed = True

    def _discard(self) -> None:
        shutil.rmtree(self._tmpdir, ignore_errors=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


# ------------------------------------------------------------------ metadata

def bag_bytes(path) -> int:
    """Total size on disk of a bag (directory or file)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _mcap_embedded_metadata(path: Path) -> Optional[str]:
    """The rosbag2 metadata record of an .mcap, read without decompressing anything."""
    scan = scan_mcap(path, None)
    if scan is None:
        return None
    text = None
    with path.open("rb") as f:
        for offset, length in scan.metadata:
            if length > _MAX_METADATA_BYTES:
                continue
            f.seek(offset)
            body = f.read(length)
            try:
                (n,) = struct.unpack_from("<I", body, 0)
                name = body[4:4 + n].decode()
                pos = 4 + n
                (maplen,) = struct.unpack_from("<I", body, pos)
                pos += 4
                stop = min(len(body), pos + maplen)
                entries = {}
                while pos < stop:
                    (kl,) = struct.unpack_from("<I", body, pos)
                    key = body[pos + 4:pos + 4 + kl].decode()
                    pos += 4 + kl
                    (vl,) = struct.unpack_from("<I", body, pos)
                    entries[key] = body[pos + 4:pos + 4 + vl].decode()
                    pos += 4 + vl
            except (struct.error, UnicodeDecodeError):
                continue
            if name == "rosbag2" and "serialized_metadata" in entries:
                text = entries["serialized_metadata"]
    return text


def embedded_metadata(path) -> Dict[str, Any]:
    """The ``rosbag2_bagfile_information`` of a bag: metadata.yaml of a directory, or the copy
    that rosbag2 (version >= 9) embeds in a .mcap / .db3 file. {} where there is none."""
    from ruamel.yaml import YAML

    path = Path(path)
    text = None
    try:
        if path.is_dir():
            meta = path / "metadata.yaml"
            if meta.is_file() and meta.stat().st_size <= _MAX_METADATA_BYTES:
                text = meta.read_text(encoding="utf-8")
        elif path.suffix == ".mcap":
            text = _mcap_embedded_metadata(path)
        elif path.suffix == ".db3":
            con = sqlite3.connect(path.resolve().as_uri() + "?mode=ro&immutable=1", uri=True)
            try:
                row = con.execute("SELECT metadata FROM metadata WHERE length(metadata) <= ? "
                                  "ORDER BY id DESC LIMIT 1", (_MAX_METADATA_BYTES,)).fetchone()
                text = row[0] if row else None
            finally:
                con.close()
        doc = YAML(typ="safe").load(text) if text else {}
    except Exception:
        return {}
    if not isinstance(doc, dict):
        return {}
    doc = doc.get("rosbag2_bagfile_information", doc)
    return doc if isinstance(doc, dict) else {}


def stored_type_hashes(path) -> Dict[str, str]:
    """topic -> type_description_hash as recorded in the bag's metadata."""
    out = {}
    for entry in embedded_metadata(path).get("topics_with_message_count") or []:
        try:
            meta = entry["topic_metadata"]
            if meta.get("type_description_hash"):
                out[meta["name"]] = meta["type_description_hash"]
        except (KeyError, TypeError, AttributeError):
            continue
    return out
