"""Helpers for learned-codec tests: real pairs and the tiny trained test model (its fixtures are in
conftest.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

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
