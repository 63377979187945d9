"""The RGB-D codec library. Importing it never imports rclpy."""
from .base import (CodecBackend, CodecError, EncodedRGBD, RGBDFrame, available_backends,
                   create_backend, register_backend)

__all__ = ["CodecBackend", "CodecError", "EncodedRGBD", "RGBDFrame", "available_backends",
           "create_backend", "register_backend"]
