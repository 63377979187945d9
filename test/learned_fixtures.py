"""Fixtures for learned-codec tests: real pairs and tiny models (untrained, trained for minutes)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from rgbd_codec_ros.codec.learned.model import build_model

HERE = Path(__file__).resolve().parent
#: a tiny model trained for a few minutes on the shared data (test/data/README.md says how)
TRAINED_TINY = HERE / "data" / "tiny_trained.pt"


def load_pair(data_dir, source: str, index: int):
    """(colour uint8 HxWx3, depth uint16, depth units per metre) of one real pair."""
    import json

    import imagecodecs
    folder = Path(data_dir) / source
    colors = sorted((folder / "color").iterdir())
    depths = sorted((folder / "depth").iterdir())
    color = np.asarray(imagecodecs.imread(str(colors[index])))[..., :3]
    depth = np.asarray(imagecodecs.imread(str(depths[index])))
    scale = float(json.loads((folder / "meta.json").read_text())["depth_scale_per_m"])
    return np.ascontiguousarray(color), depth, scale


@pytest.fixture(scope="session")
def untrained_tiny_weights(tmp_path_factory) -> str:
    torch.manual_seed(1234)
    model = build_model("tiny").eval()
    path = tmp_path_factory.mktemp("weights") / "tiny_untrained.pt"
    model.export_weights(str(path), {"name": "tiny-untrained"})
    return str(path)


@pytest.fixture(scope="session")
def trained_tiny_weights() -> str:
    if not TRAINED_TINY.is_file():
        pytest.fail(f"{TRAINED_TINY} is missing; see test/data/README.md to regenerate it")
    return str(TRAINED_TINY)
