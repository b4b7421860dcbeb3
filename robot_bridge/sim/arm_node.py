"""A Meta-World arm behind the topics a real arm uses: sensor_msgs/JointState (the 39-D state as
positions obs0..obs38), an optional rendered sensor_msgs/Image, a std_msgs/Float64MultiArray command
topic (4-D: hand delta xyz + gripper), ~/success (std_msgs/Bool), ~/status (std_msgs/String, JSON:
layout, steps, success, done) and ~/reset (std_srvs/Trigger: next layout; `seed` set at run time
picks the layout of the next reset). Real-time mode steps the
simulation at `rate_hz` with the latest command. Fast mode (`fast:=true`) runs on simulated time: it
publishes /clock (rosgraph_msgs/Clock, 1/rate_hz per step; `<robot>/clock` in a cell) and steps only when a command answers the
state it published (lockstep with a bridge on `use_sim_time`; the state is re-sent while it waits), so
an episode takes as long as the computation, not the wall clock. With `stop_when_done:=true` the arm
stops after success or `max_steps` until reset (a station ends the episode), instead of resetting
itself.

    python -m robot_bridge.sim.arm_node --ros-args -p task:=push-v3 -p rate_hz:=30.0
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import rclpy
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, String
from std_srvs.srv import Trigger

from robot_bridge.ros import spin_node


class SimArmNode(Node):
    def __init__(self):
        super().__init__("sim_arm")
        for name, default in (("task", "push-v3"), ("seed", 0), ("rate_hz", 30.0), ("image_height", 0),
                              ("image_width", 0), ("state_topic", "joint_states"), ("command_topic", "command"),
                              ("camera_topic", "camera/front"), ("max_steps", 400), ("fast", False),
                              ("fast_timeout_s", 0.1), ("stop_when_done", False)):
            self.declare_parameter(name, default)
        g = lambda n: self.get_parameter(n).value  # noqa: E731
        from training.sim.arm import MetaWorldArm

        size = (g("image_height"), g("image_width")) if g("image_height") else None
        self.arm = MetaWorldArm(g("task"), max_steps=g("max_steps"), image_size=size)
        self.seed = int(g("seed"))
        self.max_steps = int(g("max_steps"))
        self.obs = self.arm.reset(self.seed)
        self.command = np.zeros(4, np.float32)
        self.success = False
        self.steps = 0
        self.resets = 0  # resets served: a status names the one it follows, so a station never takes an earlier episode's end for this one's
        self._lock = threading.Lock()
        self.state_pub = self.create_publisher(JointState, g("state_topic"), 10)
        self.image_pub = self.create_publisher(Image, g("camera_topic"), 4) if size else None
        self.success_pub = self.create_publisher(Bool, "~/success", 10)
        self.status_pub = self.create_publisher(String, "~/status", 10)
        self.stop_when_done = bool(g("stop_when_done"))
        self.awaiting_reset = self.stop_when_done  # driven by a station: nothing moves before its first reset
        self._reset_event = threading.Event()
        self.create_subscription(Float64MultiArray, g("command_topic"), self._on_command, 10)
        self.create_service(Trigger, "~/reset", self._reset)
        self.add_on_set_parameters_callback(self._on_set)
        self.period = 1.0 / g("rate_hz")
        self.fast, self.fast_timeout = bool(g("fast")), float(g("fast_timeout_s"))
        self._command_event = threading.Event()
        self.sim_ns = time.time_ns()  # simulated time starts at the wall clock, then runs at its own pace
        self._stamp = None
        if self.fast:
            from rosgraph_msgs.msg import Clock

            self.clock_pub = self.create_publisher(Clock, "/clock", 10)
        self._running = True
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _on_command(self, m: Float64MultiArray) -> None:
        a = np.asarray(m.data, np.float32)
        if a.shape == (4,) and np.all(np.isfinite(a)):
            with self._lock:
                self.command = np.clip(a, -1, 1)
            self._command_event.set()

    def _on_set(self, params):
        """`seed` may be set at run time: the next reset puts the arm on that layout (a station's
        fixed evaluation layouts)."""
        from rcl_interfaces.msg import SetParametersResult

        for prm in params:
            if prm.name == "seed":
                with self._lock:
                    self.seed = int(prm.value) - 1
        return SetParametersResult(successful=True)

    def _reset(self, _req, resp):
        with self._lock:
            self.seed += 1
            self.resets += 1
            self.obs = self.arm.reset(self.seed)
            self.command[:] = 0
            self.success, self.steps = False, 0
            self.awaiting_reset = False
            self._command_event.clear()
        self._reset_event.set()
        resp.success, resp.message = True, json.dumps({"layout": self.seed, "reset": self.resets})
        return resp

    def _render(self) -> dict:
        with self._lock:
            return self.arm.images() if self.image_pub else {}

    def _done(self) -> bool:
        return self.awaiting_reset or self.success or self.steps >= self.max_steps

    def _loop(self) -> None:
        nxt = time.monotonic()
        images = self._render()
        if self.fast:  # the initial state, so the first command has something to answer
            self._publish(images, advance=True)
        while self._running and rclpy.ok():
            nxt += self.period
            if self.stop_when_done and self._done():  # the episode is over: wait for the station's reset
                self._status()
                if self._reset_event.wait(self.fast_timeout if self.fast else self.period):
                    self._reset_event.clear()
                    images = self._render()
                    self._safe_publish(images, advance=self.fast)
                nxt = time.monotonic()
                continue
            if self.fast:  # lockstep: step when the bridge has answered the state we published
                if not self._command_event.wait(self.fast_timeout):
                    reset = self._reset_event.is_set()  # a new layout is a new instant
                    self._reset_event.clear()
                    if reset:
                        images = self._render()
                    if not self._safe_publish(images, advance=reset):  # re-send: a late subscriber, a new episode
                        return
                    continue
                self._command_event.clear()
            with self._lock:
                if self.steps >= self.max_steps:  # the simulator's own limit: a fresh layout, as a reset would
                    self.seed += 1
                    self.obs = self.arm.reset(self.seed)
                    self.success, self.steps = False, 0
                    self.get_logger().info(f"time limit: reset to layout {self.seed}")
                res = self.arm.step(self.command)
                self.obs, self.success = res.obs, self.success or res.success
                self.steps += 1
                images = self.arm.images() if self.image_pub else {}
            self._reset_event.clear()
            if not self._safe_publish(images, advance=True):
                return
            if not self.fast:
                time.sleep(max(0.0, nxt - time.monotonic()))

    def _safe_publish(self, images: dict, advance: bool) -> bool:
        try:
            self._publish(images, advance)
            return True
        except Exception:  # shutting down: the context went away under us
            if rclpy.ok():
                raise
            return False

    def _status(self) -> None:
        with self._lock:  # one consistent snapshot (a reset may land between two reads)
            doc = {"layout": self.seed, "reset": self.resets, "steps": self.steps, "success": bool(self.success),
                   "done": self.stop_when_done and self._done()}
        self.status_pub.publish(String(data=json.dumps(doc)))

    def _publish(self, images: dict, advance: bool = True) -> None:
        """`advance`: a new simulated instant (after a step or a reset); else the same state again."""
        if self.fast:
            from builtin_interfaces.msg import Time
            from rosgraph_msgs.msg import Clock

            if advance or self._stamp is None:
                self.sim_ns += int(self.period * 1e9)
                self._stamp = Time(sec=self.sim_ns // 1_000_000_000, nanosec=self.sim_ns % 1_000_000_000)
                self.clock_pub.publish(Clock(clock=self._stamp))
            stamp = self._stamp
        else:
            stamp = self.get_clock().now().to_msg()
        with self._lock:
            obs, success, done = self.obs.copy(), self.success, self.stop_when_done and self._done()
        self.success_pub.publish(Bool(data=success))
        self._status()
        if done:  # the episode is over: no state, so no tick answers it
            return
        for frame in images.values():  # images first: the state is what triggers a tick on sim time
            img = Image(height=frame.shape[0], width=frame.shape[1], encoding="rgb8", step=frame.shape[1] * 3,
                        data=frame.tobytes())
            img.header.stamp = stamp
            self.image_pub.publish(img)
        js = JointState(name=[f"obs{i}" for i in range(len(obs))], position=[float(x) for x in obs])
        js.header.stamp = stamp
        self.state_pub.publish(js)

    def shutdown(self) -> None:
        self._running = False
        self._thread.join(timeout=2)


def main(args=None) -> None:
    spin_node(SimArmNode, args)


if __name__ == "__main__":
    main()
