"""A scripted corrective teleoperator: watches the arm's state and the commands sent to it, and
with the task's Meta-World expert and the training harness's TakeoverRule (one implementation)
engages (std_msgs/Bool) and commands corrections (std_msgs/Float64MultiArray), then releases.

    python -m robot_bridge.sim.teleop_node --ros-args -p task:=push-v3
"""

from __future__ import annotations

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64MultiArray

from robot_bridge.ros import spin_node


class ScriptedTeleopNode(Node):
    def __init__(self):
        super().__init__("scripted_teleop")
        for name, default in (("task", "push-v3"), ("state_topic", "joint_states"), ("command_topic", "command"),
                              ("teleop_command_topic", "teleop/command"), ("engage_topic", "teleop/engage"),
                              ("deviation", 1.0), ("patience", 8), ("takeover_ticks", 25), ("max_takeovers", 3),
                              ("budget", 10_000)):
            self.declare_parameter(name, default)
        g = lambda n: self.get_parameter(n).value  # noqa: E731
        from metaworld import policies as experts

        from training.sim.arm import _expert_class_name
        from training.sim.teleop import TakeoverRule

        self.expert = getattr(experts, _expert_class_name(g("task")))()
        self.rule = TakeoverRule(deviation=g("deviation"), patience=g("patience"), takeover_ticks=g("takeover_ticks"),
                                 max_takeovers=g("max_takeovers"), round_budget=g("budget"))
        self.last_cmd: np.ndarray | None = None
        self.engaged = False
        self.engaged_ticks = 0
        self.engage_pub = self.create_publisher(Bool, g("engage_topic"), 10)
        self.cmd_pub = self.create_publisher(Float64MultiArray, g("teleop_command_topic"), 10)
        self.create_subscription(JointState, g("state_topic"), self._on_state, 10)
        self.create_subscription(Float64MultiArray, g("command_topic"), self._on_command, 10)

    def _on_command(self, m: Float64MultiArray) -> None:
        self.last_cmd = np.asarray(m.data, np.float32)

    def _on_state(self, m: JointState) -> None:
        from training.sim.teleop import unstick_gripper

        obs = np.asarray(m.position, np.float64)
        if obs.shape != (39,) or not np.all(np.isfinite(obs)):  # not the arm's state: ignore it
            return
        expert = np.asarray(self.expert.get_action(obs), np.float32)
        drive = self.rule.update(obs[:3], None if self.engaged else self.last_cmd, expert)
        if drive:
            expert = unstick_gripper(obs, expert)
            self.cmd_pub.publish(Float64MultiArray(data=[float(x) for x in expert]))
            self.engaged_ticks += 1
        if drive != self.engaged:
            self.engaged = drive
            self.get_logger().info("engaged" if drive else "released")
        self.engage_pub.publish(Bool(data=drive))


def main(args=None) -> None:
    spin_node(ScriptedTeleopNode, args)


if __name__ == "__main__":
    main()
