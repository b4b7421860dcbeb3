"""A simulated cell: the Meta-World arm, the scripted teleoperator and the bridge for one robot,
each its own process, talking over DDS on the cell's ROS domain in the robot's own namespace
(`/<robot>/...`, robot_bridge.ros.robot_namespace). `recap bridge up` and the demo start cells the
same way."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from training.sim.arm import task_instruction

ROS_ENV = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
           "MUJOCO_GL": "osmesa", "PYTHONUNBUFFERED": "1"}


def ros_args(params: dict) -> list[str]:
    out = ["--ros-args"]
    for k, v in params.items():
        out += ["-p", f"{k}:={json.dumps(v)}"]  # YAML reads JSON: strings stay strings, '' stays empty
    return out


@dataclass
class CellSpec:
    robot: str = "sim-arm-0"
    task: str = "push-v3"
    rate_hz: float = 30.0
    store: Path = Path("recap_home/store")
    inference_url: str = ""
    token: str = ""
    api_url: str = ""
    teleop: bool = True
    image: int = 0  # camera image height; 0: no camera
    image_width: int = 0  # camera image width; 0: 4/3 of the height
    fast: bool = False  # simulated time: the arm steps as fast as the bridge answers
    seed: int = 0  # the arm's first layout
    max_steps: int = 400
    stop_when_done: bool = False  # the arm waits for a reset after success or max_steps (a station drives it)
    execute: int = 4
    fsync: bool = True
    extra: dict = field(default_factory=dict)  # bridge parameter overrides

    def nodes(self) -> dict[str, tuple[str, dict]]:
        """name -> (module, ROS parameters)."""
        w = self.image_width or self.image * 4 // 3
        sim = {"use_sim_time": True} if self.fast else {}
        out = {"arm": ("robot_bridge.sim.arm_node", {
                   "task": self.task, "rate_hz": float(self.rate_hz), "image_height": self.image, "image_width": w,
                   "fast": self.fast, "seed": self.seed, "max_steps": self.max_steps,
                   "stop_when_done": self.stop_when_done}),
               "bridge": ("robot_bridge.bridge_node", {
                   "robot_id": self.robot, "state_dim": 39, "action_dim": 4, "store_root": str(Path(self.store).resolve()),
                   "task": self.task, "instruction": task_instruction(self.task), "hold_keep": [3],
                   "control_rate_hz": float(self.rate_hz), "inference_url": self.inference_url,
                   **({"inference_token_file": str(self.token_file())} if self.token else {}),
                   "api_url": self.api_url, "execute": self.execute,
                   "fsync": self.fsync, **sim,
                   **({"camera_names": ["front"], "camera_topics": ["camera/front"], "camera_height": self.image,
                       "camera_width": w} if self.image else {}), **self.extra})}
        if self.teleop:
            out["teleop"] = ("robot_bridge.sim.teleop_node", {"task": self.task, **sim})
        return out

    def token_file(self) -> Path:
        """Where the robot's token waits for its bridge (a file only the user reads: a ROS parameter
        would be readable by anyone on the domain); written by `commands()`."""
        return Path(self.store).resolve().parent / "tokens" / f"{self.robot}.token"

    def _write_token(self) -> None:
        f = self.token_file()
        f.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(self.token + "\n")
        os.chmod(f, 0o600)

    @property
    def namespace(self) -> str:
        from robot_bridge.ros import robot_namespace

        return robot_namespace(self.robot)

    def commands(self) -> dict[str, list[str]]:
        from robot_bridge.ros import namespace_args

        ns = namespace_args(self.namespace)
        if self.token:
            self._write_token()
        return {n: [sys.executable, "-m", m, *ros_args(p), *ns] for n, (m, p) in self.nodes().items()}
