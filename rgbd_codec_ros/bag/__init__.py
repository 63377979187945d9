"""rosbag2 tools for CompressedRGBD, built on rosbags / mcap (no ROS install needed).

- ``compress``: raw colour + depth Image topics -> CompressedRGBD (paired like the encoder node)
- ``decompress``: CompressedRGBD -> raw Image + CameraInfo topics, or a folder of PNGs
- ``info``: topics, counts, codec, bit rates, compression ratio
- ``live``: record / play serialized messages with rclpy (the only part that needs ROS)
- ``dataset``: folders of image pairs <-> raw Image bags
- ``msgdefs``: message definitions and RIHS01 hashes as rosbag2 stores them
- ``storage``: opening bags, and writing them atomically (temporary name, rename on success)

The command line is ``rgbd-codec bag ...`` (rgbd_codec_ros/cli/bag_cmds.py); docs/bags.md.
"""
