"""Start encoder_node with config/encoder.yaml.

    ros2 launch rgbd_codec_ros encoder.launch.py \
        color_image:=/camera/camera/color/image_raw \
        depth_image:=/camera/camera/aligned_depth_to_color/image_raw \
        color_info:=/camera/camera/color/camera_info \
        depth_info:=/camera/camera/aligned_depth_to_color/camera_info

Depth must be registered to the colour camera (same size, pixel-aligned):
for a RealSense use the aligned_depth_to_color topics.

Rate control: ``target_kbps:=1000`` (kbit/s; 0 = off) and ``adapt_to_link:=true`` override
the YAML file's values when given (docs/ratecontrol.md).

The most used typed backend options likewise (docs/ros.md, "Backend options"):
``color_quality:=75`` (classical.color_quality, 1..100), ``depth_codec:=rvl_lossy``
(classical.depth_codec), ``learned_quality:=1.5`` (learned.quality, -1..3) and
``learned_weights:=/path/to/weights.pt`` (learned.weights). An entry of the YAML file's
``codec_options`` still wins over them at start.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    config = os.path.join(get_package_share_directory("rgbd_codec_ros"), "config", "encoder.yaml")
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=config,
                              description="YAML file with the encoder's parameters"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument("color_image", default_value="color/image_raw",
                              description="colour image topic (rgb8, bgr8, rgba8, bgra8, mono8)"),
        DeclareLaunchArgument("depth_image", default_value="depth/image_raw",
                              description="depth image topic (16UC1 or 32FC1), registered to colour"),
        DeclareLaunchArgument("color_info", default_value="color/camera_info",
                              description="colour camera_info topic"),
        DeclareLaunchArgument("depth_info", default_value="depth/camera_info",
                              description="depth camera_info topic"),
        DeclareLaunchArgument("compressed", default_value="rgbd/compressed",
                              description="output topic (rgbd_codec_ros/msg/CompressedRGBD)"),
        DeclareLaunchArgument("target_kbps", default_value="",
                              description="bit-rate budget in kbit/s (0 = off); empty = the YAML file's"),
        DeclareLaunchArgument("adapt_to_link", default_value="",
                              description="true/false: follow rgbd/link_feedback; empty = the YAML file's"),
        DeclareLaunchArgument("color_quality", default_value="",
                              description="classical.color_quality, 1..100; empty = the YAML file's"),
        DeclareLaunchArgument("depth_codec", default_value="",
                              description="classical.depth_codec: jpegxl, rvl, png, rvl_lossy; empty = the YAML file's"),
        DeclareLaunchArgument("learned_quality", default_value="",
                              description="learned.quality, -1..3; empty = the YAML file's"),
        DeclareLaunchArgument("learned_weights", default_value="",
                              description="learned.weights (a weights file); empty = the YAML file's"),
        OpaqueFunction(function=_encoder_node),
    ])


#: launch argument -> (typed parameter, type): given ones override the YAML file
TYPED_ARGUMENTS = {
    "color_quality": ("classical.color_quality", int),
    "depth_codec": ("classical.depth_codec", str),
    "learned_quality": ("learned.quality", float),
    "learned_weights": ("learned.weights", str),
}


def _encoder_node(context):
    """The node, with the rate-control and backend-option launch arguments that were given as overrides."""
    arg = LaunchConfiguration
    overrides = {}
    target = arg("target_kbps").perform(context).strip()
    if target:
        overrides["target_kbps"] = float(target)
    adapt = arg("adapt_to_link").perform(context).strip().lower()
    if adapt:
        overrides["adapt_to_link"] = adapt in ("true", "1", "yes")
    for name, (param, kind) in TYPED_ARGUMENTS.items():
        value = arg(name).perform(context).strip()
        if value:
            overrides[param] = kind(value)
    return [
        Node(
            package="rgbd_codec_ros",
            executable="encoder_node",
            name="rgbd_encoder",
            namespace=arg("namespace"),
            parameters=[arg("params_file")] + ([overrides] if overrides else []),
            remappings=[
                ("color/image_raw", arg("color_image")),
                ("depth/image_raw", arg("depth_image")),
                ("color/camera_info", arg("color_info")),
                ("depth/camera_info", arg("depth_info")),
                ("rgbd/compressed", arg("compressed")),
            ],
            output="screen",
            emulate_tty=True,
        )
    ]
