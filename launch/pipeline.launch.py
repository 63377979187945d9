"""Encoder and decoder together (a loop-back check of the codec on live data),
optionally fed by player_node instead of a camera.

    # your camera driver publishes color/image_raw and depth/image_raw:
    ros2 launch rgbd_codec_ros pipeline.launch.py
    # no camera: the procedural synthetic room, or a folder with color/ and depth/:
    ros2 launch rgbd_codec_ros pipeline.launch.py use_player:=true
    ros2 launch rgbd_codec_ros pipeline.launch.py use_player:=true player_source:=/data/seq1
    # over an emulated thin link (docs/ratecontrol.md): 1.25 Mbit/s, 50 ms, 1 % loss, 1 Mbit/s budget
    ros2 launch rgbd_codec_ros pipeline.launch.py use_player:=true use_link_emulator:=true \
        link_kbps:=1250 link_delay_ms:=50 link_loss_pct:=1 target_kbps:=1000 adapt_to_link:=true

In a real deployment run encoder.launch.py on the robot and decoder.launch.py
where the images are needed; this file starts both in one namespace.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.conditions import IfCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    share = get_package_share_directory("rgbd_codec_ros")
    arg = LaunchConfiguration

    def include(name, **arguments):
        return IncludeLaunchDescription(
            PythonLaunchDescriptionSource(os.path.join(share, "launch", name)),
            launch_arguments=arguments.items())

    return LaunchDescription([
        DeclareLaunchArgument("namespace", default_value="", description="namespace of all nodes"),
        DeclareLaunchArgument("encoder_params", default_value=os.path.join(share, "config", "encoder.yaml")),
        DeclareLaunchArgument("decoder_params", default_value=os.path.join(share, "config", "decoder.yaml")),
        DeclareLaunchArgument("use_player", default_value="false",
                              description="start player_node as the image source"),
        DeclareLaunchArgument("player_source", default_value="synthetic",
                              description="'synthetic' or a folder with color/ and depth/ images"),
        DeclareLaunchArgument("player_rate", default_value="10.0", description="player frames per second"),
        DeclareLaunchArgument("color_image", default_value="color/image_raw", description="colour image topic"),
        DeclareLaunchArgument("depth_image", default_value="depth/image_raw",
                              description="depth image topic, registered to colour"),
        DeclareLaunchArgument("target_kbps", default_value="",
                              description="encoder bit-rate budget, kbit/s (0 = off); empty = the YAML file's"),
        DeclareLaunchArgument("adapt_to_link", default_value="",
                              description="encoder follows rgbd/link_feedback (true/false); empty = the YAML file's"),
        DeclareLaunchArgument("color_quality", default_value="",
                              description="encoder classical.color_quality, 1..100; empty = the YAML file's"),
        DeclareLaunchArgument("depth_codec", default_value="",
                              description="encoder classical.depth_codec; empty = the YAML file's"),
        DeclareLaunchArgument("learned_quality", default_value="",
                              description="encoder learned.quality, -1..3; empty = the YAML file's"),
        DeclareLaunchArgument("learned_weights", default_value="",
                              description="encoder learned.weights; empty = the YAML file's"),
        DeclareLaunchArgument("use_link_emulator", default_value="false",
                              description="relay rgbd/compressed through link_emulator_node to the decoder"),
        DeclareLaunchArgument("link_kbps", default_value="0.0", description="emulated link rate, kbit/s (0 = unlimited)"),
        DeclareLaunchArgument("link_delay_ms", default_value="0.0", description="emulated one-way delay, ms"),
        DeclareLaunchArgument("link_jitter_ms", default_value="0.0", description="emulated jitter (0..value), ms"),
        DeclareLaunchArgument("link_loss_pct", default_value="0.0", description="emulated random loss, percent"),
        DeclareLaunchArgument("link_queue_ms", default_value="500.0",
                              description="emulated radio buffer: tail drop past this many ms of queue"),
        DeclareLaunchArgument("color_info", default_value="color/camera_info"),
        DeclareLaunchArgument("depth_info", default_value="depth/camera_info"),
        Node(
            package="rgbd_codec_ros",
            executable="player_node",
            name="rgbd_player",
            namespace=arg("namespace"),
            parameters=[{"source": ParameterValue(arg("player_source"), value_type=str),
                         "rate": ParameterValue(arg("player_rate"), value_type=float)}],
            condition=IfCondition(arg("use_player")),
            output="screen",
            emulate_tty=True,
        ),
        include("encoder.launch.py", namespace=arg("namespace"), params_file=arg("encoder_params"),
                color_image=arg("color_image"), depth_image=arg("depth_image"),
                color_info=arg("color_info"), depth_info=arg("depth_info"),
                target_kbps=arg("target_kbps"), adapt_to_link=arg("adapt_to_link"),
                color_quality=arg("color_quality"), depth_codec=arg("depth_codec"),
                learned_quality=arg("learned_quality"), learned_weights=arg("learned_weights")),
        Node(
            package="rgbd_codec_ros",
            executable="link_emulator_node",
            name="rgbd_link_emulator",
            namespace=arg("namespace"),
            parameters=[{"bandwidth_kbps": ParameterValue(arg("link_kbps"), value_type=float),
                         "delay_ms": ParameterValue(arg("link_delay_ms"), value_type=float),
                         "jitter_ms": ParameterValue(arg("link_jitter_ms"), value_type=float),
                         "loss_pct": ParameterValue(arg("link_loss_pct"), value_type=float),
                         "queue_ms": ParameterValue(arg("link_queue_ms"), value_type=float)}],
            condition=IfCondition(arg("use_link_emulator")),
            output="screen",
            emulate_tty=True,
        ),
        # with the emulator the decoder reads what comes out of the link (its output_topic)
        include("decoder.launch.py", namespace=arg("namespace"), params_file=arg("decoder_params"),
                compressed=PythonExpression(["'link/rgbd/compressed' if '", arg("use_link_emulator"),
                                             "'.lower() == 'true' else 'rgbd/compressed'"])),
    ])
