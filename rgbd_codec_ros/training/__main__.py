"""``python -m rgbd_codec_ros.training ARGS`` = ``rgbd-codec train ARGS``; the entry point for torchrun:

    torchrun --nproc_per_node 2 -m rgbd_codec_ros.training --data ../shared/data/rgbd ...
"""
import sys

from rgbd_codec_ros.cli import main

if __name__ == "__main__":
    sys.exit(main(["train"] + sys.argv[1:]))
