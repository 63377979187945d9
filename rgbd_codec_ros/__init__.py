"""rgbd_codec_ros: joint RGB-D compression for ROS 2.

Sub-packages:
- ``codec``: the codec library (classical and learned backends). No ROS imports.
- ``training``: datasets, losses, training and evaluation of the learned codec. No ROS imports.
- ``bag``: rosbag2 tools built on file-format libraries (rosbags, mcap).
- ``ros``: the rclpy nodes (thin: conversion, sync, parameters, QoS, diagnostics).
- ``cli``: the ``rgbd-codec`` command line.
"""
__version__ = "0.1.0"
