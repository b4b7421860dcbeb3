"""Running one node per process until Ctrl-C / SIGTERM, the same way for every node here."""

from __future__ import annotations

from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node


def spin_node(make: Callable[[], Node], args=None) -> None:
    """Init, build the node, spin; on exit call its `shutdown()` (if any) before destroying it."""
    rclpy.init(args=args)
    node = make()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if hasattr(node, "shutdown"):
            node.shutdown()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
