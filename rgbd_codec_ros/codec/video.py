"""Temporal colour coding: H.264, HEVC and AV1 through FFmpeg (PyAV), set up for live links.

No ROS here. A :class:`VideoEncoder` turns one colour image into one packet (no B-frames, no
lookahead, no frame threading: one frame in gives one packet out, so the codec adds no frame of
latency); a :class:`VideoDecoder` turns one packet back into one image. Keyframes are IDR frames
that carry their parameter sets, so a decoder created on any keyframe decodes from there on:
that is what lets late joiners and bags cut mid-stream start at a keyframe.

Quality: ``quality`` 1..100 (100 best, as for the intra codecs) maps linearly onto the
encoder's CRF (or constant QP) range. Rate: with ``bitrate_bps`` the encoder's own rate control
runs with a VBV buffer of ``VBV_SECONDS`` of that rate (live bitrate changes are applied in
place where the encoder supports it, otherwise by reopening it on a keyframe).

The colour conversion is FFmpeg's swscale both ways (BT.601, limited range, 4:2:0), so encoder
and decoder agree on it. Odd and tiny sizes are padded (replicated edge rows/columns) to an even
size of at least MIN_CODED_SIDE and cropped after decoding; grey images travel as the luma plane with neutral chroma.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Dict, List, Optional, Tuple

import numpy as np

from .base import CodecError

#: the rate-control buffer, in seconds of the target rate (issue 10: at most 1 s)
VBV_SECONDS = 0.5
#: nominal frame rate given to the encoders (rate control uses real timestamps when given)
NOMINAL_FPS = 10
#: a rate change smaller than this (relative) is not worth reopening an encoder for
REOPEN_RATE_CHANGE = 0.2
#: least time between two reopenings for a rate change (each costs a keyframe)
REOPEN_MIN_S = 2.0


@dataclass(frozen=True)
class VideoCodecSpec:
    name: str
    #: FFmpeg encoders, preferred first; hardware ones are tried only where a device exists
    cpu_encoders: Tuple[str, ...]
    gpu_encoders: Tuple[str, ...]
    decoders: Tuple[str, ...]
    #: CRF (or QP) range of the CPU encoder: (best, worst)
    crf_range: Tuple[int, int]


VIDEO_CODECS: Dict[str, VideoCodecSpec] = {
    "h264": VideoCodecSpec("h264", ("libx264",), ("h264_nvenc",), ("h264",), (0, 51)),
    "hevc": VideoCodecSpec("hevc", ("libx265",), ("hevc_nvenc",), ("hevc",), (0, 51)),
    "av1": VideoCodecSpec("av1", ("libsvtav1",), ("av1_nvenc",), ("libdav1d", "av1"), (1, 63)),
}

#: QP range of NVENC's constant-QP mode (the same for all three codecs' 8-bit streams)
_NVENC_QP = (0, 51)


def _av():
    try:
        import av
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise CodecError(f"video colour codecs need PyAV (pip install av): {exc}") from None
    return av


def _codec_exists(name: str, mode: str) -> bool:
    av = _av()
    try:
        av.codec.Codec(name, mode)
    except Exception:
        return False
    return True


def available_encoders(codec: str) -> List[str]:
    """The encoders for ``codec`` in this PyAV build (GPU ones listed even without a device)."""
    spec = VIDEO_CODECS[codec]
    return [e for e in spec.gpu_encoders + spec.cpu_encoders if _codec_exists(e, "w")]


def video_codec_available(codec: str) -> bool:
    spec = VIDEO_CODECS[codec]
    return (any(_codec_exists(e, "w") for e in spec.cpu_encoders)
            and any(_codec_exists(d, "r") for d in spec.decoders))


def _gpu_present() -> bool:
    # NVENC needs the NVIDIA driver's device nodes; without them opening it only fails slowly
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")


def quality_to_crf(quality: int, crf_range: Tuple[int, int]) -> int:
    """1..100 (100 best) onto (best, worst) CRF, linearly and monotonically."""
    best, worst = crf_range
    return int(round(worst - (worst - best) * (int(quality) - 1) / 99.0))


#: the smallest side coded: tiny images are padded up to it (some encoders refuse smaller ones)
MIN_CODED_SIDE = 64


def _coded_side(n: int) -> int:
    """The side of the coded picture: even (4:2:0), and not below MIN_CODED_SIDE."""
    return max(MIN_CODED_SIDE, n + (n & 1))


def _decoder_pixel_limit(width: int, height: int) -> int:
    # decoders allocate whole macroblocks / coding tree units / superblocks (up to 128 px)
    return (-(-_coded_side(width) // 128) * 128) * (-(-_coded_side(height) // 128) * 128)


def _to_frame(img: np.ndarray, width: int, height: int):
    """uint8 RGB (HxWx3) or grey (HxW) -> a yuv420p VideoFrame of the padded (even) size."""
    av = _av()
    h, w = img.shape[:2]
    if (h, w) != (height, width):
        pad = ((0, height - h), (0, width - w)) + (((0, 0),) if img.ndim == 3 else ())
        img = np.pad(img, pad, mode="edge")
    if img.ndim == 3:
        return av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24").reformat(
            format="yuv420p")
    frame = av.VideoFrame(width, height, "yuv420p")
    planes = (img, np.full((height // 2, width // 2), 128, np.uint8),
              np.full((height // 2, width // 2), 128, np.uint8))
    for plane, data in zip(frame.planes, planes):
        # planes may have padded lines: write row by row through the plane's own stride
        view = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
        view[:, :plane.width] = data
    return frame


def _from_frame(frame, width: int, height: int, mono: bool) -> np.ndarray:
    if mono:
        plane = frame.planes[0]
        luma = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
        return np.ascontiguousarray(luma[:height, :width])
    rgb = frame.to_ndarray(format="rgb24")
    return np.ascontiguousarray(rgb[:height, :width])


class VideoEncoder:
    """One live colour stream of one size. ``encode`` returns (packet, is_keyframe)."""

    def __init__(self, codec: str, width: int, height: int, mono: bool = False,
                 quality: int = 60, bitrate_bps: int = 0, keyframe_interval: int = 0,
                 encoder: str = "auto", threads: int = 2):
        if codec not in VIDEO_CODECS:
            raise CodecError(f"unknown video codec {codec!r}; known: {', '.join(VIDEO_CODECS)}")
        self.codec, self.spec = codec, VIDEO_CODECS[codec]
        self.width, self.height, self.mono = int(width), int(height), bool(mono)
        self.quality, self.bitrate_bps = int(quality), int(bitrate_bps)
        self.keyframe_interval, self.threads = int(keyframe_interval), int(threads)
        self._ctx = None
        self._opened_bitrate = 0
        self._opened_at: Optional[float] = time.monotonic()
        self._frames_since_key = 0
        self._force_key = True
        self._pts = -1  # last presentation time given to the encoder, ms
        self.encoder_name = self._open(self._candidates(encoder))

    # -------------------------------------------------------------- set-up
    def _candidates(self, encoder: str) -> List[str]:
        spec = self.spec
        if encoder != "auto":
            known = spec.gpu_encoders + spec.cpu_encoders
            if encoder not in known or not _codec_exists(encoder, "w"):
                have = available_encoders(self.codec)
                raise CodecError(
                    f"video encoder {encoder!r} is not in this PyAV build for {self.codec}; "
                    f"available: {', '.join(have) if have else 'none'} (or 'auto')")
            return [encoder]
        gpu = [e for e in spec.gpu_encoders if _gpu_present() and _codec_exists(e, "w")]
        cpu = [e for e in spec.cpu_encoders if _codec_exists(e, "w")]
        if not cpu and not gpu:
            raise CodecError(f"this PyAV build has no {self.codec} encoder "
                             f"(looked for {', '.join(spec.gpu_encoders + spec.cpu_encoders)})")
        return gpu + cpu

    def _options(self, name: str) -> Dict[str, str]:
        gop = self.keyframe_interval if self.keyframe_interval > 0 else 100000
        rate = self.bitrate_bps
        vbv = {"maxrate": str(rate), "bufsize": str(int(rate * VBV_SECONDS))} if rate else {}
        if name.endswith("_nvenc"):
            opts = {"preset": "p3", "tune": "ull", "zerolatency": "1", "delay": "0", "bf": "0",
                    "forced-idr": "1", "rc-lookahead": "0", "no-scenecut": "1"}
            if rate:
                opts.update(rc="cbr", **vbv)
            else:
                opts.update(rc="constqp", qp=str(quality_to_crf(self.quality, _NVENC_QP)))
            return opts
        crf = str(quality_to_crf(self.quality, self.spec.crf_range))
        if name == "libx264":
            opts = {"preset": "veryfast", "tune": "zerolatency", "forced-idr": "1",
                    "x264-params": f"scenecut=0:keyint={gop}:min-keyint={gop}"}
        elif name == "libx265":
            opts = {"preset": "ultrafast", "tune": "zerolatency", "forced-idr": "1",
                    "x265-params": f"log-level=error:repeat-headers=1:scenecut=0:bframes=0:"
                                   f"rc-lookahead=0:keyint={gop}:min-keyint={gop}"}
        elif name == "libsvtav1":
            # pred-struct=1: low delay (no reordering); lookahead 0: nothing buffered
            opts = {"preset": "10", "svtav1-params": f"pred-struct=1:lookahead=0:keyint={gop}"}
        else:  # pragma: no cover - every encoder of VIDEO_CODECS is handled above
            raise CodecError(f"no settings for encoder {name!r}")
        if rate:
            opts.update(vbv)
        else:
            opts["crf"] = crf
        return opts

    def _open(self, candidates: List[str]) -> str:
        av = _av()
        errors = []
        for name in candidates:
            ctx = av.CodecContext.create(name, "w")
            ctx.width, ctx.height = _coded_side(self.width), _coded_side(self.height)
            ctx.pix_fmt = "yuv420p"
            ctx.time_base = Fraction(1, 1000)
            ctx.framerate = Fraction(NOMINAL_FPS, 1)
            ctx.gop_size = self.keyframe_interval if self.keyframe_interval > 0 else 100000
            ctx.max_b_frames = 0
            ctx.thread_count = max(1, self.threads)
            if self.bitrate_bps:
                ctx.bit_rate = self.bitrate_bps
            ctx.options = self._options(name)
            try:
                ctx.open()
            except Exception as exc:  # e.g. NVENC without a usable device: try the next one
                errors.append(f"{name}: {exc}")
                continue
            self._ctx, self._opened_bitrate = ctx, self.bitrate_bps
            self._force_key = True
            return name
        raise CodecError("no video encoder could be opened: " + "; ".join(errors))

    # -------------------------------------------------------------- control
    def request_keyframe(self) -> None:
        self._force_key = True

    def set_quality(self, quality: int) -> None:
        """Quality mode only; takes effect by reopening at the next frame (a keyframe)."""
        if int(quality) != self.quality:
            self.quality = int(quality)
            if not self.bitrate_bps:
                self._reopen()

    def set_bitrate(self, bitrate_bps: int, now: Optional[float] = None) -> None:
        """Change the target rate (0: back to quality mode). x264 follows in place; the other
        encoders reopen on a keyframe, at most every REOPEN_MIN_S and only for a real change."""
        bitrate_bps = int(bitrate_bps)
        if bitrate_bps == self.bitrate_bps:
            return
        old, self.bitrate_bps = self.bitrate_bps, bitrate_bps
        if not old or not bitrate_bps:
            self._reopen()
            return
        opened = self._opened_bitrate
        if self.encoder_name == "libx264" and 0.5 * opened <= bitrate_bps <= opened:
            self._ctx.bit_rate = bitrate_bps  # x264 reconfigures itself at the next frame
            return
        if abs(bitrate_bps - opened) < REOPEN_RATE_CHANGE * opened:
            return
        now = time.monotonic() if now is None else now
        if self._opened_at is not None and now - self._opened_at < REOPEN_MIN_S:
            if bitrate_bps < opened and self.encoder_name == "libx264":
                self._ctx.bit_rate = bitrate_bps
            return
        self._reopen(now)

    def _reopen(self, now: Optional[float] = None) -> None:
        self._ctx = None
        self.encoder_name = self._open([self.encoder_name])
        self._opened_at = time.monotonic() if now is None else now

    # -------------------------------------------------------------- coding
    def encode(self, img: np.ndarray, timestamp_s: Optional[float] = None,
               force_keyframe: bool = False) -> Tuple[bytes, bool]:
        av = _av()
        h, w = img.shape[:2]
        if (w, h) != (self.width, self.height) or (img.ndim == 2) != self.mono:
            raise CodecError(f"video encoder is set up for {self.width}x{self.height}"
                             f"{' mono' if self.mono else ''}, got {w}x{h}")
        key = force_keyframe or self._force_key or (
            self.keyframe_interval > 0 and self._frames_since_key >= self.keyframe_interval)
        frame = _to_frame(img, _coded_side(self.width), _coded_side(self.height))
        if timestamp_s is not None:
            pts = int(round(timestamp_s * 1000))
        else:
            pts = self._pts + 1000 // NOMINAL_FPS
        frame.pts = max(pts, self._pts + 1)  # strictly increasing, whatever the clock does
        self._pts = frame.pts
        frame.pict_type = av.video.frame.PictureType.I if key else av.video.frame.PictureType.NONE
        try:
            packets = self._ctx.encode(frame)
        except Exception as exc:
            self._force_key = True
            raise CodecError(f"{self.encoder_name} could not code the frame: {exc}") from None
        data = b"".join(bytes(p) for p in packets)
        if not data:  # the settings above never buffer; if an encoder does, say so loudly
            raise CodecError(f"{self.encoder_name} returned no packet for a frame "
                             "(an encoder with delay is not usable here)")
        is_key = any(p.is_keyframe for p in packets)
        if key and not is_key:
            raise CodecError(f"{self.encoder_name} did not code a requested keyframe")
        self._force_key = False
        self._frames_since_key = 1 if is_key else self._frames_since_key + 1
        return data, is_key


class VideoDecoder:
    """Decodes one stream's packets in order, from a keyframe on. Create one per keyframe run."""

    def __init__(self, codec: str, width: int, height: int, mono: bool = False, threads: int = 1):
        av = _av()
        spec = VIDEO_CODECS.get(codec)
        if spec is None:
            raise CodecError(f"unknown video codec {codec!r}")
        names = [d for d in spec.decoders if _codec_exists(d, "r")]
        if not names:
            raise CodecError(f"this PyAV build has no {codec} decoder")
        self.width, self.height, self.mono = int(width), int(height), bool(mono)
        ctx = av.CodecContext.create(names[0], "r")
        # slice threads only: frame threads would hold frames back (latency)
        ctx.thread_type = "SLICE"
        ctx.thread_count = max(1, int(threads))
        # FFmpeg's own guard: a forged parameter set cannot make it allocate a bigger frame
        opts = {"max_pixels": str(_decoder_pixel_limit(self.width, self.height))}
        if names[0] == "libdav1d":  # dav1d's threads otherwise buffer frames
            opts["max_frame_delay"] = "1"
        ctx.options = opts
        self._ctx = ctx
        self.decoder_name = names[0]

    def decode(self, packet: bytes) -> np.ndarray:
        av = _av()
        try:
            frames = self._ctx.decode(av.Packet(packet))
        except Exception as exc:
            raise CodecError(f"{self.decoder_name} stream cannot be decoded: {exc}") from None
        if len(frames) != 1:
            raise CodecError(f"{self.decoder_name} gave {len(frames)} frames for one packet")
        frame = frames[0]
        if (frame.width, frame.height) != (_coded_side(self.width), _coded_side(self.height)):
            raise CodecError(f"video stream is {frame.width}x{frame.height}, the header says "
                             f"{self.width}x{self.height}")
        return _from_frame(frame, self.width, self.height, self.mono)
