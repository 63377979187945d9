"""System errors as the CLI's one-line errors, shared by every sub-command family."""
from __future__ import annotations

from contextlib import contextmanager

from rgbd_codec_ros.codec.base import CodecError


@contextmanager
def system_errors_as_codec_errors():
    """OSError and MemoryError become CodecErrors (one line, exit code 2), not tracebacks."""
    try:
        yield
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        raise CodecError(f"{where}{exc.strerror or exc}") from exc
    except MemoryError as exc:
        raise CodecError(f"out of memory ({exc or 'MemoryError'})") from exc
