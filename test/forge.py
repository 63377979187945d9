"""Forged learned-codec frames, made with the project's own packer (valid CRC): shared by the
hostile-input tests and the subprocesses they start."""

from rgbd_codec_ros.codec.learned import bitstream as bs
from rgbd_codec_ros.codec.learned.backend import padded_size


def forged(model_id: str, w: int, h: int, section: bytes = b"\0" * 4, **header) -> bytes:
    ph, pw = padded_size(h, w)
    fields = dict(model_id=model_id, quality=1.0, width=w, height=h, padded_width=pw, padded_height=ph,
                  color_mode=bs.COLOR_RGB, depth_type=bs.DEPTH_U16, depth_scale_per_m=1000.0,
                  depth_range_m=10.0, z_height=ph // 64, z_width=pw // 64, latent_hash=b"\0" * 8)
    fields.update(header)
    sections = {n: section for n in bs.SECTIONS}
    sections.update(hole_mask=b"\0", clipped_mask=b"\0", far_depth=b"")
    return bs.pack(bs.LearnedFrameHeader(**fields), sections)
