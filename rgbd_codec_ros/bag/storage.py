"""Opening rosbag2 bags for reading, and writing new ones safely.

Input: a rosbag2 directory (with metadata.yaml), or a bare ``.db3`` / ``.mcap``
file. Output: a rosbag2 directory, or a bare ``.mcap`` / ``.db3`` file where
the output name ends in one of those suffixes.

Writing is atomic: the bag is built under a hidden temporary name in the same
directory as the output and renamed into place only when it is complete, so an
interrupted or failed run never leaves a half-written bag under the final
name (and the temporary is removed on failure).
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from rgbd_codec_ros.codec.base import CodecError

STORAGES = ("sqlite3", "mcap")
_SUFFIX = {"sqlite3": ".db3", "mcap": ".mcap"}


def open_reader(path):
    """An open rosbags Reader, or CodecError saying what is wrong with ``path``."""
    from rosbags.rosbag2 import Reader
    from rosbags.rosbag2.errors import ReaderError

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
        reader = Reader(path)
        reader.open()
    except (ReaderError, OSError, ValueError, KeyError) as exc:
        raise CodecError(f"cannot read bag {path}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 (a damaged file can fail anywhere in a parser)
        raise CodecError(f"cannot read bag {path}: {type(exc).__name__}: {exc}") from exc
    return reader


def input_storage(path) -> str:
    """'sqlite3' or 'mcap' for an input bag."""
    path = Path(path)
    if path.is_file():
        return "mcap" if path.suffix == ".mcap" else "sqlite3"
    files = list(path.glob("*.mcap"))
    return "mcap" if files else "sqlite3"


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


def check_output(out: Path, force: bool) -> None:
    """Refuse an existing output unless force; refuse a missing parent folder."""
    if out.exists() or out.is_symlink():
        if not force:
            raise CodecError(f"output {out} exists; pass --force to replace it")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise CodecError(f"output folder {parent} does not exist")


class AtomicBagWriter:
    """A rosbags Writer that appears under its final name only when closed successfully.

    Use as a context manager; on an exception (KeyboardInterrupt included) the
    partial bag is deleted and the final name is left untouched.
    """

    def __init__(self, out, storage: str = "mcap", force: bool = False, single_file: bool = False,
                 version: int = 9):
        from rosbags.rosbag2 import StoragePlugin, Writer

        self.out = Path(out)
        self.storage = storage
        self.force = force
        self.single_file = single_file
        check_output(self.out, force)
        parent = self.out.parent if str(self.out.parent) else Path(".")
        self._tmpdir = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", suffix=".partial",
                                             dir=parent))
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

    # -- writer API -------------------------------------------------------
    def __enter__(self) -> "AtomicBagWriter":
        try:
            self.writer.open()
        except BaseException:
            self._discard()
            raise
        return self

    def add_connection(self, topic: str, msgtype: str, msgdef: str, rihs01: str,
                       qos: Sequence = ()):
        key = (topic, msgtype)
        conn = self._connections.get(key)
        if conn is None:
            conn = self.writer.add_connection(
                topic, msgtype, msgdef=msgdef, rihs01=rihs01,
                offered_qos_profiles=list(qos))
            self._connections[key] = conn
        return conn

    def write(self, connection, timestamp: int, data) -> None:
        self.writer.write(connection, int(timestamp), data)

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                self._commit()
            except BaseException:
                self._discard()
                raise
        else:
            if self.writer.storage is not None:
                try:
                    self.writer.abort()
                except Exception:  # noqa: BLE001  (already failing: removing the temporary matters)
                    pass
            self._discard()
        return False

    # -- internals ----------------------------------------------------------
    def _commit(self) -> None:
        self.writer.close()
        if self.single_file:
            produced = self._bagdir / f"{self._bagdir.name}{_SUFFIX[self.storage]}"
            src = produced
        else:
            src = self._bagdir
        if self.out.exists() or self.out.is_symlink():
            if not self.force:   # appeared while we were writing
                raise CodecError(f"output {self.out} appeared while writing; not replaced")
            _remove(self.out)
        os.replace(src, self.out)
        shutil.rmtree(self._tmpdir, ignore_errors=True)
        self.committed = True

    def _discard(self) -> None:
        shutil.rmtree(self._tmpdir, ignore_errors=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def bag_bytes(path) -> int:
    """Total size on disk of a bag (directory or file)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def embedded_metadata(path) -> Dict[str, Any]:
    """The ``rosbag2_bagfile_information`` of a bag: metadata.yaml of a directory, or the copy
    that rosbag2 (version >= 9) embeds in a .mcap / .db3 file. {} where there is none."""
    from ruamel.yaml import YAML

    path = Path(path)
    text = None
    try:
        if path.is_dir():
            meta = path / "metadata.yaml"
            if meta.is_file():
                text = meta.read_text(encoding="utf-8")
        elif path.suffix == ".mcap":
            from mcap.reader import make_reader

            with path.open("rb") as f:
                for rec in make_reader(f).iter_metadata():
                    if rec.name == "rosbag2":
                        text = rec.metadata.get("serialized_metadata")
        elif path.suffix == ".db3":
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                row = con.execute("SELECT metadata FROM metadata ORDER BY id DESC LIMIT 1").fetchone()
                text = row[0] if row else None
            finally:
                con.close()
        doc = YAML(typ="safe").load(text) if text else {}
    except Exception:  # noqa: BLE001  (no or unreadable metadata: nothing to report)
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
