"""Running one node per process until Ctrl-C / SIGTERM, the same way for every node here."""

from __future__ import annotations

from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, ShutdownException, SingleThreadedExecutor
from rclpy.node import Node


def spin_node(make: Callable[[], Node], args=None, poll_s: float = 0.2) -> None:
    """Init, build the node, spin; on exit call its `shutdown()` (if any) before destroying it.

    The executor waits at most `poll_s` at a time and re-checks the context: a SIGTERM whose
    wake-up of the wait set is lost (seen about 1 in 6 stops of a node publishing from its own
    thread) still ends the process within `poll_s`, instead of never."""
    rclpy.init(args=args)
    node = make()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while rclpy.ok():
            executor.spin_once(timeout_sec=poll_s)
    except (KeyboardInterrupt, ExternalShutdownException, ShutdownException):
        pass
    finally:
        if hasattr(node, "shutdown"):
            node.shutdown()
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
