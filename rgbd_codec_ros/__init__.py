"""rgbd_codec_ros: joint RGB-D compression for ROS 2.

Sub-packages:
- ``codec``: the codec library (classical and learned backends). No ROS imports.
- ``training``: datasets, losses, training and evaluation of the learned codec. No ROS imports.
- ``bag``: rosbag2 tools built on file-format libraries (rosbags, mcap).
- ``ros``: the rclpy nodes (thin: conversion, sync, parameters, QoS, diagnostics).
- ``cli``: the ``rgbd-codec`` command line.
"""
import os as _os
import pkgutil as _pkgutil

# OpenMP threads that spin while they wait made the learned codec's entropy path 7 s instead of
# 0.5 s, and training steps ~50x slower, when another process shares the cores (a robot always
# runs others). It is read once, when torch loads OpenMP, which happens after this import in
# every entry point (nodes, CLI, training); a value the user set is kept.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

# The generated message module (rgbd_codec_ros/msg) is installed by CMake next to
# the installed copy of this package. When the package is imported from a source
# checkout (tests, `python -m` in the repository), that installed folder is a
# second portion of the same package: add it to the search path so that
# `rgbd_codec_ros.msg` is found. A no-op when everything comes from one folder.
__path__ = _pkgutil.extend_path(__path__, __name__)
