"""A scripted teleoperator with two jobs, as a person at the station has:

- `mode:=correct` (default): watches the arm's state and the commands sent to it and, with the
  task's Meta-World expert and the training harness's TakeoverRule (one implementation), engages
  (std_msgs/Bool) and commands corrections (std_msgs/Float64MultiArray), then releases; on each
  takeover it says when the policy's mistake was (std_msgs/Header on `mistake_topic`: the stamp of
  the arm state where its takeover condition first held, frame_id which condition), which the bridge
  records with the episode;
- `mode:=demonstrate`: holds the pedal down and drives the whole episode as one of the scripted
  operators (`operator:=clean|slow|sloppy`, training/sim/operators.py), so demonstrations come from
  the same mix of better and worse people as in the simulation benchmark;
- `mode:=off`: hands off (autonomous evaluation).

Parameters may be changed at run time (`ros2 param set /sim_arm_0/scripted_teleop mode demonstrate`); any
change starts a new episode for the teleoperator (operator noise re-seeded from `seed`, takeover
count reset), and a change of `budget` starts a new round of correction budget.

    python -m robot_bridge.sim.teleop_node --ros-args -p task:=push-v3
"""

from __future__ import annotations

from collections import deque

import numpy as np
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64MultiArray, Header

from robot_bridge.ros import spin_node

MODES = ("correct", "demonstrate", "off")


class ScriptedTeleopNode(Node):
    def __init__(self):
        super().__init__("scripted_teleop")
        for name, default in (("task", "push-v3"), ("state_topic", "joint_states"), ("command_topic", "command"),
                              ("teleop_command_topic", "teleop/command"), ("engage_topic", "teleop/engage"),
                              ("mistake_topic", "teleop/mistake"),
                              ("deviation", 1.0), ("patience", 8), ("takeover_ticks", 25), ("max_takeovers", 3),
                              ("budget", 10_000), ("mode", "correct"), ("operator", "clean"), ("seed", 0)):
            self.declare_parameter(name, default)
        g = lambda n: self.get_parameter(n).value  # noqa: E731
        from metaworld import policies as experts

        from training.sim.arm import _expert_class_name
        from training.sim.teleop import TakeoverRule

        self.expert = getattr(experts, _expert_class_name(g("task")))()
        self.rule = TakeoverRule(deviation=g("deviation"), patience=g("patience"), takeover_ticks=g("takeover_ticks"),
                                 max_takeovers=g("max_takeovers"), round_budget=g("budget"))
        self.mode, self.operator = "correct", None
        self._configure(g("mode"), g("operator"), int(g("seed")))
        self.last_cmd: np.ndarray | None = None
        self.engaged = False
        self.engaged_ticks = 0
        self.stamps: deque = deque(maxlen=max(self.rule.stall_ticks, self.rule.patience) + 1)  # recent states' stamps
        self.engage_pub = self.create_publisher(Bool, g("engage_topic"), 10)
        self.mistake_pub = self.create_publisher(Header, g("mistake_topic"), 10)
        self.cmd_pub = self.create_publisher(Float64MultiArray, g("teleop_command_topic"), 10)
        self.create_subscription(JointState, g("state_topic"), self._on_state, 10)
        self.create_subscription(Float64MultiArray, g("command_topic"), self._on_command, 10)
        self.add_on_set_parameters_callback(self._on_set)

    def _configure(self, mode: str, operator: str, seed: int) -> None:
        from training.sim.operators import CleanOperator, SloppyOperator, SlowOperator

        kinds = {"clean": CleanOperator, "slow": SlowOperator, "sloppy": SloppyOperator}
        self.mode = mode
        self.operator = kinds[operator]()
        self.operator.reset(np.random.default_rng(seed + 7919))
        self.rule.reset_episode()
        self.last_cmd = None

    def _on_set(self, params) -> SetParametersResult:
        new = {p.name: p.value for p in params}
        if new.get("mode", self.mode) not in MODES:
            return SetParametersResult(successful=False, reason=f"mode must be one of {MODES}")
        if new.get("operator", "clean") not in ("clean", "slow", "sloppy"):
            return SetParametersResult(successful=False, reason="operator must be clean, slow or sloppy")
        g = lambda n: new.get(n, self.get_parameter(n).value)  # noqa: E731
        if "budget" in new:
            self.rule.round_budget = int(new["budget"])
            self.rule.reset_round()
        self._configure(g("mode"), g("operator"), int(g("seed")))
        self.get_logger().info(f"episode: mode {self.mode}, operator {self.operator.name}, seed {g('seed')}")
        return SetParametersResult(successful=True)

    def _on_command(self, m: Float64MultiArray) -> None:
        self.last_cmd = np.asarray(m.data, np.float32)

    def _on_state(self, m: JointState) -> None:
        from training.sim.teleop import unstick_gripper

        obs = np.asarray(m.position, np.float64)
        if obs.shape != (39,) or not np.all(np.isfinite(obs)):  # not the arm's state: ignore it
            return
        self.stamps.append(m.header.stamp)
        if self.mode == "off":
            drive = False
        else:
            expert = np.asarray(self.expert.get_action(obs), np.float32)
            if self.mode == "demonstrate":
                drive, command = True, self.operator.act(expert)
            else:
                drive = self.rule.update(obs[:3], None if self.engaged else self.last_cmd, expert)
                command = unstick_gripper(obs, expert)
                if self.rule.mistake_lag is not None:  # a takeover: when the policy went wrong, as the rule saw it
                    stamp = self.stamps[-1 - min(self.rule.mistake_lag, len(self.stamps) - 1)]
                    self.mistake_pub.publish(Header(stamp=stamp, frame_id=self.rule.mistake_why))
            if drive:
                self.cmd_pub.publish(Float64MultiArray(data=[float(x) for x in np.clip(command, -1, 1)]))
                self.engaged_ticks += 1
        if drive != self.engaged:
            self.engaged = drive
            self.get_logger().info("engaged" if drive else "released")
        self.engage_pub.publish(Bool(data=drive))


def main(args=None) -> None:
    spin_node(ScriptedTeleopNode, args)


if __name__ == "__main__":
    main()
