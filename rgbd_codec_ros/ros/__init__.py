"""The rclpy side: nodes (encoder, decoder, player), the demo and their helpers.

Modules named ``*_node``, ``common`` and ``demo`` import rclpy; ``dds_env``,
``options``, ``sources`` and ``stats`` do not.
"""
import pkgutil as _pkgutil

import rgbd_codec_ros as _package

# The generated message module (rgbd_codec_ros/msg) is installed by CMake next to
# the installed copy of this package. When the package itself is imported from a
# source checkout (tests, `python -m` in the repository), that installed folder
# is a second portion of the same package: add it to the search path so
# `rgbd_codec_ros.msg` is found. A no-op when everything comes from one folder.
_package.__path__[:] = _pkgutil.extend_path(list(_package.__path__), _package.__name__)
