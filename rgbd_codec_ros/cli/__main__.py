"""``python -m rgbd_codec_ros.cli``: the same as ``rgbd-codec``."""
import sys

from rgbd_codec_ros.cli import main

sys.exit(main())
