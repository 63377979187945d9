"""Start decoder_node with config/decoder.yaml.

    ros2 launch rgbd_codec_ros decoder.launch.py compressed:=/robot1/rgbd/compressed

Publishes decoded/color/image_raw, decoded/depth/image_raw,
decoded/color/camera_info and decoded/depth/camera_info (in the node's
namespace) with the original stamps, frame_ids and encodings.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    config = os.path.join(get_package_share_directory("rgbd_codec_ros"), "config", "decoder.yaml")
    arg = LaunchConfiguration
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=config,
                              description="YAML file with the decoder's parameters"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument("compressed", default_value="rgbd/compressed",
                              description="input topic (rgbd_codec_ros/msg/CompressedRGBD)"),
        Node(
            package="rgbd_codec_ros",
            executable="decoder_node",
            name="rgbd_decoder",
            namespace=arg("namespace"),
            parameters=[arg("params_file")],
            remappings=[("rgbd/compressed", arg("compressed"))],
            output="screen",
            emulate_tty=True,
        ),
    ])
