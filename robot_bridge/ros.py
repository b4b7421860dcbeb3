"""Running one node per process until Ctrl-C / SIGTERM, the same way for every node here; and the
ROS namespace of a robot. Invariant: every node of a robot's cell (arm, teleoperator, bridge, the
station that drives them) lives in `robot_namespace(robot_id)` and uses relative names, so cells meet
only by sharing a robot id, never by sharing a ROS domain."""

from __future__ import annotations

import sys
from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, ShutdownException, SingleThreadedExecutor
from rclpy.node import Node


class ConfigError(ValueError):
    """A configuration a node refuses to start with (said in one line, without a traceback)."""


def spin_node(make: Callable[[], Node], args=None, poll_s: float = 0.2) -> None:
    """Init, build the node, spin; on exit call its `shutdown()` (if any) before destroying it.

    The executor waits at most `poll_s` at a time and re-checks the context: a SIGTERM whose
    wake-up of the wait set is lost (seen about 1 in 6 stops of a node publishing from its own
    thread) still ends the process within `poll_s`, instead of never."""
    rclpy.init(args=args)
    try:
        node = make()
    except ConfigError as e:  # the operator's mistake: one line, no traceback
        print(f"error: {e}", file=sys.stderr, flush=True)
        rclpy.shutdown()
        raise SystemExit(2) from None
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while rclpy.ok():
            executor.spin_once(timeout_sec=poll_s)
    except (KeyboardInterrupt, ExternalShutdownException, ShutdownException):
        pass
    except Exception:  # noqa: BLE001 - a callback caught by the context shutting down (SIGTERM) under it
        if rclpy.ok():
            raise
    finally:
        if hasattr(node, "shutdown"):
            node.shutdown()
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


class RobotNameError(ValueError):
    """A robot id that cannot name a ROS namespace."""


def robot_namespace(robot_id: str) -> str:
    """The ROS namespace of a robot's nodes: `/<robot_id>` with '-' and '.' as '_' (robot ids allow them,
    ROS names do not), so topics and services are `/<robot>/joint_states`, `/<robot>/recap_bridge/...`
    and two cells on one ROS domain never hear each other. Ids differing only in '-' / '.' / '_' share
    a namespace: give robots of one domain ids that differ otherwise."""
    from rclpy.exceptions import InvalidNamespaceException
    from rclpy.validate_namespace import validate_namespace

    ns = "/" + str(robot_id).replace("-", "_").replace(".", "_")
    try:
        if ns == "/":
            raise RobotNameError("robot id is empty")
        validate_namespace(ns)
    except (InvalidNamespaceException, RobotNameError) as e:
        reason = str(e).splitlines()[0].removeprefix("Invalid namespace: ").rstrip(":")
        raise RobotNameError(f"robot id {robot_id!r} cannot name a ROS namespace ({reason}): use letters, digits, "
                             "'_', '-' and '.', starting with a letter") from None
    return ns


def namespace_args(namespace: str) -> list[str]:
    """ROS arguments putting a node in `namespace`, its simulated clock included (a cell's arm
    publishes `<ns>/clock`, so two simulated-time cells on one domain keep their own time)."""
    return ["-r", f"__ns:={namespace}", "-r", f"/clock:={namespace}/clock"]


def busy_ros_domains(domains: list[int], probe_s: float = 1.5) -> dict[int, list[str]]:
    """domain -> the ROS nodes already on it (only the busy ones), seen by one short-lived node per
    domain after `probe_s` of discovery."""
    import time

    import rclpy

    probes = []
    try:
        for d in domains:
            ctx = rclpy.Context()
            rclpy.init(context=ctx, domain_id=d)
            probes.append((d, ctx, rclpy.create_node(f"recap_domain_probe_{d}", context=ctx)))
        time.sleep(probe_s)
        busy = {}
        for d, _ctx, node in probes:
            others = [f"{ns.rstrip('/')}/{n}" for n, ns in node.get_node_names_and_namespaces()
                      if not n.startswith("recap_domain_probe_")]
            if others:
                busy[d] = sorted(others)
        return busy
    finally:
        for _d, ctx, node in probes:
            node.destroy_node()
            rclpy.shutdown(context=ctx)
