"""The learned codec behind the ROS nodes: encoder and decoder processes over real DDS.

The decoder node must publish exactly what the codec library decodes from the
same CompressedRGBD message (latents are exact across processes and the pixels
are synthesised deterministically), with the holes exactly where they were.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import NodeProcess, Probe, load_real_pairs, unique_namespace
from learned_fixtures import TRAINED_TINY
from test_ros_pipeline import Pipeline

pytestmark = pytest.mark.ros  # starts rclpy nodes / uses DDS


@pytest.fixture(scope="module")
def learned_pipeline(rclpy_context, tmp_path_factory):
    ns = unique_namespace("learned")
    log_dir = tmp_path_factory.mktemp("learned")
    encoder = NodeProcess("encoder_node", log_dir, ns, {
        "codec": "learned", "codec_options": f"weights={TRAINED_TINY}, quality=2, device=cpu",
        "input_qos": "reliable", "input_depth": 20, "output_depth": 20, "log_period": 2.0,
        "max_age_s": 0.0})  # fixed stamps of 2023, and learned coding is slow on a small CPU
    decoder = NodeProcess("decoder_node", log_dir, ns, {"input_depth": 20, "output_depth": 20,
                                                        "model_path": str(TRAINED_TINY)})
    probe = Probe("learned_probe", ns)
    try:
        pipe = Pipeline(probe, encoder, decoder)
        pipe.wait_ready()
        yield pipe
    finally:
        probe.destroy()
        encoder.stop()
        decoder.stop()


def test_learned_codec_end_to_end(learned_pipeline):
    from rgbd_codec_ros import convert
    from rgbd_codec_ros.codec.learned.backend import LearnedBackend

    pairs = [(c[:240, :320].copy(), d[:240, :320].copy())
             for c, d in load_real_pairs("osd_kinect_pcl_mosd", 4, step=5)]
    stamps = [learned_pipeline.send(c, "rgb8", d, "16UC1") for c, d in pairs]
    got = learned_pipeline.wait_decoded(stamps, timeout=300.0)
    assert got == len(stamps), f"only {got} of {len(stamps)} pairs decoded"
    library = LearnedBackend(weights=str(TRAINED_TINY), device="cpu")
    for stamp, (color, depth) in zip(stamps, pairs):
        msg = learned_pipeline.compressed[stamp]
        assert msg.codec == "learned" and msg.model_id.startswith("tiny-test@")
        expected = library.decode(bytes(msg.payload))
        c_out = convert.image_to_array(learned_pipeline.color_out[stamp])
        d_out = convert.image_to_array(learned_pipeline.depth_out[stamp + 10**6])
        np.testing.assert_array_equal(c_out, expected.color)
        np.testing.assert_array_equal(d_out, expected.depth)
        np.testing.assert_array_equal(d_out == 0, depth == 0)
        assert len(msg.payload) < (color.nbytes + depth.nbytes) / 10
