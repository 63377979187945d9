from glob import glob

from setuptools import find_packages, setup

package_name = "rgbd_codec_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(include=[package_name, package_name + ".*"]),
    include_package_data=True,
    package_data={package_name: ["models/*.pt", "models/*.json", "models/*.md", "bag/*.msg"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/msg", ["msg/CompressedRGBD.msg"]),
        ("share/" + package_name + "/launch", sorted(glob("launch/*.launch.py"))),
        ("share/" + package_name + "/config", sorted(glob("config/*.yaml") + glob("config/*.xml"))),
    ],
    install_requires=["numpy<2", "setuptools"],
    zip_safe=False,
    maintainer="rgbd_codec_ros developers",
    maintainer_email="rgbd-codec-ros@example.invalid",
    description="Joint learned RGB-D compression (Bi-CPT + Bi-CEE) for ROS 2 image transport and bags",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "rgbd-codec = rgbd_codec_ros.cli:main",
            "encoder_node = rgbd_codec_ros.ros.encoder_node:main",
            "decoder_node = rgbd_codec_ros.ros.decoder_node:main",
            "rgbd_player_node = rgbd_codec_ros.ros.player_node:main",
            "link_emulator_node = rgbd_codec_ros.ros.link_emulator_node:main",
            "rgbd-demo = rgbd_codec_ros.ros.demo:main",
        ],
    },
)
