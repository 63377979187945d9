"""Changing the encoder's codec while it runs: cheap checks first, the expensive build off the
executor thread, the swap between two frames. No ROS imports.

A parameter callback must answer at once and must not apply anything it then refuses. So a
new ``codec`` / ``codec_options`` goes through three steps:

1. ``check_codec_options``: the codec name is known, every option name, type and range is
   plausible (no file is read, torch is not imported). A failure refuses the parameter.
2. ``build_backend`` runs on a worker thread (``BackgroundBuilder``); loading learned weights
   takes seconds and hundreds of MB. The old backend keeps coding meanwhile.
3. The node takes the finished backend in its executor thread and swaps it in between two
   frames, or, if building failed, logs why and keeps the old one; a failed or superseded
   build is dropped at once so that its memory is freed.

Options the node applies itself (``NODE_OPTIONS``: torch's thread count, global to the
process) are applied only when the backend they belong to goes into force.
"""
from __future__ import annotations

import gc
import math
import os
import threading
from typing import Any, Callable, Dict, Optional, Tuple

from rgbd_codec_ros.codec.base import CodecError, available_backends, check_max_pixels, create_backend

#: options of the learned backend, as the nodes accept them
LEARNED_OPTIONS = ("weights", "quality", "device", "threads", "model_path", "pixel_exact", "max_pixels", "runtime")
#: learned options that only a new backend takes (changing one rebuilds, off the callback)
LEARNED_BUILD_OPTIONS = ("weights", "device", "model_path")
#: learned options a running backend takes through ``configure`` (quality first: the only one
#: whose range depends on the model, so a refused value leaves everything as it was)
LEARNED_CONFIGURE_OPTIONS = ("quality", "pixel_exact", "max_pixels", "runtime")
#: options the node applies itself when the backend goes into force (not passed to the backend)
NODE_OPTIONS = ("threads",)
#: backends that are cheap to make (milliseconds, no files): built in the parameter callback
CHEAP_CODECS = ("classical",)
DEVICES = ("auto", "cpu", "cuda")
RUNTIMES = ("auto", "torch", "onnxruntime")


#: the learned backend's own bound of ``threads`` (rgbd_codec_ros.codec.learned.backend.MAX_THREADS;
#: not imported from there: that imports torch)
LEARNED_MAX_THREADS = 64


def max_threads() -> int:
    """Upper bound of the ``threads`` option in the nodes: the CPUs of this machine (more threads
    than CPUs only slow torch down), at most LEARNED_MAX_THREADS."""
    return max(1, min(os.cpu_count() or 1, LEARNED_MAX_THREADS))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_codec_options(codec: str, options: Dict[str, Any]) -> Dict[str, Any]:
    """Cheap checks of a codec name and its options (names, types, ranges) before anything is
    built or applied. Returns the options to use; raises CodecError saying what is wrong.

    The learned backend's options are checked here without importing it (that imports torch);
    other backends check their own options when they are made.
    """
    if codec not in available_backends():
        raise CodecError(f"unknown codec {codec!r}; available: {', '.join(available_backends())}")
    if codec != "learned":
        return dict(options)
    out: Dict[str, Any] = {}
    for key, value in options.items():
        if key not in LEARNED_OPTIONS:
            raise CodecError(f"unknown option {key!r} for the learned codec (known: {', '.join(LEARNED_OPTIONS)})")
        if key == "threads":
            top = max_threads()
            if not _is_int(value) or not 0 <= value <= top:
                raise CodecError(f"threads must be an integer in 0..{top} (the CPUs of this machine; "
                                 f"0 = leave torch's setting), got {value!r}")
        elif key == "quality":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise CodecError(f"quality must be a number, got {value!r}")
            value = float(value)
        elif key == "pixel_exact":
            if not isinstance(value, bool):
                raise CodecError(f"pixel_exact must be true or false, got {value!r}")
        elif key == "device":
            if value not in DEVICES:
                raise CodecError(f"device must be one of {', '.join(DEVICES)}, got {value!r}")
        elif key == "max_pixels":
            value = check_max_pixels(value)
        elif key == "runtime":
            if value not in RUNTIMES:
                raise CodecError(f"runtime must be one of {', '.join(RUNTIMES)}, got {value!r}")
        else:  # weights, model_path: paths (a path of digits parses as a number)
            if isinstance(value, bool) or value == "":
                raise CodecError(f"{key} must be a file or folder name, got {value!r}")
            value = str(value)
        out[key] = value
    return out


def needs_rebuild(codec: str, active: Dict[str, Any], wanted: Dict[str, Any]) -> bool:
    """Whether going from options ``active`` to ``wanted`` (same codec) takes a new backend."""
    if codec != "learned":
        return False
    return any(wanted.get(k) != active.get(k) for k in LEARNED_BUILD_OPTIONS)


def backend_options(codec: str, options: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Split checked options into (constructor keywords, ``configure`` keywords to apply after)."""
    ctor = {k: v for k, v in options.items() if codec != "learned" or k not in NODE_OPTIONS}
    after = {}
    if codec == "learned" and "max_pixels" in ctor:  # a decode limit: configure() takes it
        after["max_pixels"] = ctor.pop("max_pixels")
    return ctor, after


def build_backend(codec: str, options: Dict[str, Any]):
    """A new backend made from checked options (may take seconds: learned weights)."""
    ctor, after = backend_options(codec, options)
    backend = create_backend(codec, **ctor)
    if after:
        backend.configure(**after)
    return backend


def configure_in_place(backend, codec: str, changed: Dict[str, Any]) -> None:
    """Apply changed options to a running backend (CodecError: nothing was applied)."""
    if codec == "learned":
        ordered = {k: changed[k] for k in LEARNED_CONFIGURE_OPTIONS if k in changed}
    else:
        ordered = dict(changed)
    if ordered:
        backend.configure(**ordered)


def apply_node_options(codec: str, options: Dict[str, Any]) -> None:
    """What the node itself applies when a backend goes into force: torch's thread count."""
    threads = options.get("threads", 0)
    if codec == "learned" and threads:
        import torch  # the learned backend has imported it already

        torch.set_num_threads(int(threads))


def torch_threads() -> Optional[int]:
    """torch's intra-op thread count if this process has imported torch, else None."""
    import sys

    get = getattr(sys.modules.get("torch"), "get_num_threads", None)  # None while a worker imports it
    try:
        return None if get is None else int(get())
    except Exception:
        return None


def release_memory() -> None:
    """Free what a dropped backend held: reference cycles, and glibc's free lists."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class BackgroundBuilder:
    """Builds backends on one worker thread, one at a time; the latest request wins.

    ``request(key)`` queues ``build(key)``; an earlier request still queued is replaced, one
    being built is let finish and then dropped. When the latest request is done, ``notify()``
    is called (from the worker thread: it must be thread-safe, e.g. a guard condition's
    ``trigger``) and ``take()`` then returns ``(key, backend, error)``.
    """

    def __init__(self, build: Callable[[Any], Any], notify: Callable[[], None]):
        self._build, self._notify = build, notify
        self._lock = threading.Lock()
        self._generation = 0
        self._queued: Optional[Tuple[int, Any]] = None
        self._running: Optional[int] = None
        self._result: Optional[Tuple[int, Any, Any, Optional[str]]] = None
        self._thread: Optional[threading.Thread] = None
        self._closed = False

    def request(self, key: Any) -> None:
        with self._lock:
            if self._closed:
                return
            self._generation += 1
            self._queued, self._result = (self._generation, key), None
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="backend-builder", daemon=True)
                self._thread.start()

    def cancel(self) -> None:
        """Forget the queued request; a build under way is dropped when it ends."""
        with self._lock:
            self._generation += 1
            self._queued, self._result = None, None

    @property
    def busy(self) -> bool:
        """A request is queued or being built, and it is still the latest."""
        with self._lock:
            return self._queued is not None or self._running == self._generation

    def take(self) -> Optional[Tuple[Any, Any, Optional[str]]]:
        with self._lock:
            result, self._result = self._result, None
        if result is None:
            return None
        return result[1:]

    def close(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._closed = True
            self._queued = self._result = None
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._queued is None or self._closed:
                    self._thread = None
                    return
                (generation, key), self._queued = self._queued, None
                self._running = generation
            backend, error = None, None
            try:
                backend = self._build(key)
            except CodecError as exc:
                error = str(exc)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
            with self._lock:
                self._running = None
                latest = generation == self._generation and not self._closed
                if latest:
                    self._result = (generation, key, backend, error)
            if not latest or error is not None:
                backend = None  # superseded or failed: nothing may keep its memory
                release_memory()
            if latest:
                try:
                    self._notify()
                except Exception:
                    pass
