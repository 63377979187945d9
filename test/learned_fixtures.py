"""Helpers for learned-codec tests: real pairs and the tiny trained test model (its fixtures are in
conftest.py)."""
from __future__ import annotations

from pathlib import Path


HERE = Path(__file__).resolve().parent
#: a tiny model trained for a few minutes on the shared data (test/data/README.md says how)
TRAINED_TINY = HERE / "data" / "tiny_trained.pt"


def load_pair(data_dir, source: str, index: int):
    """(colour uint8 HxWx3, depth uint16, depth units per metre) of one real pair: the ``index``-th in
    colour file-name order (the frames these tests were written against; index.csv may order
    differently), read by the project's dataset-folder reader."""
    from rgbd_codec_ros.dataset_folder import DatasetFolder, read_pair

    folder = DatasetFolder(Path(data_dir) / source)
    pair = sorted(folder.pairs, key=lambda p: p.color.name)[index]
    color, depth = read_pair(pair)
    return color, depth, folder.depth_scale_per_m
