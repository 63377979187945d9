"""The rclpy side: nodes (encoder, decoder, player), the demo and their helpers.

Modules named ``*_node``, ``common`` and ``demo`` import rclpy; ``dds_env``,
``options``, ``sources`` and ``stats`` do not.
"""
