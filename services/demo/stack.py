"""The demo's processes, all real and separate: Redis, the control-plane API, a training worker,
the inference server, and per simulated robot an arm, a scripted teleoperator and a bridge on the
robot's own ROS domain. Started in dependency order, watched, and stopped cleanly (ROS nodes with
SIGINT, services with SIGTERM) on Ctrl-C or error."""

from __future__ import annotations

import os
import secrets
import signal
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from robot_bridge.cell import ROS_ENV, CellSpec
from services.demo.config import DemoConfig
from services.launch import Process, start_process, start_python, start_redis, start_uvicorn
from services.settings import ServiceSettings


class StackError(RuntimeError):
    pass


@dataclass
class DemoStack:
    out: Path
    cfg: DemoConfig
    ros_domain: int = 40
    state: dict = field(default_factory=dict)  # tokens survive a re-run (the control plane does too)
    procs: list[Process] = field(default_factory=list)
    stations: dict = field(default_factory=dict)  # robot -> Station
    settings: ServiceSettings | None = None
    api: Process | None = None
    inference: Process | None = None

    @property
    def logs(self) -> Path:
        return self.out / "logs"

    def start(self, say=print) -> None:
        os.environ.update(ROS_ENV)  # the stations join the robots' domains from this process
        self.logs.mkdir(parents=True, exist_ok=True)
        redis = start_redis(self.out / "redis")
        self.procs.append(redis)
        self.settings = ServiceSettings(home=str((self.out / "home").resolve()), redis_url=redis.url)
        admin = self.state.setdefault("tokens", {}).setdefault("admin", f"rcp_demo_{secrets.token_hex(12)}")
        say(f"redis on {redis.url}; starting the API")
        self.api = start_uvicorn("api", "services.api.app:create_app", self.logs,
                                 {**self.settings.to_env(), "RECAP_BOOTSTRAP_ADMIN_TOKEN": admin})
        self.procs.append(self.api)
        self._tokens()
        say(f"API on {self.api.url}; dashboard at {self.api.url}/ (sign in with the operator token "
            f"{self.state['tokens']['operator']}); starting the worker and the inference server")
        self.procs.append(start_python("worker", ["-m", "services.cli", "worker", "--name", f"demo-{os.getpid()}"],
                                       self.logs, self.settings.to_env()))
        self.inference = start_uvicorn("inference", "services.inference.server:create_app", self.logs,
                                       self.settings.to_env())
        self.procs.append(self.inference)
        for i, robot in enumerate(self.cfg.robot_ids()):
            self._start_cell(i, robot)
        say(f"{self.cfg.robots} simulated robots up (ROS domains {self.ros_domain}..{self.ros_domain + self.cfg.robots - 1}); "
            "waiting for their nodes")
        from robot_bridge.station import Station

        for i, robot in enumerate(self.cfg.robot_ids()):
            st = Station(self.ros_domain + i, name=f"station_{i}")
            self.stations[robot] = st
            st.wait_ready()
        self.check()

    def _tokens(self) -> None:
        tokens = self.state["tokens"]
        with self.client("admin") as c:
            for role in ("researcher", "operator", "teleoperator"):
                if role not in tokens:
                    r = c.post("/v1/tokens", json={"name": f"demo-{role}-{secrets.token_hex(3)}", "role": role})
                    check(r)
                    tokens[role] = r.json()["token"]
            for robot in self.cfg.robot_ids():
                key = f"robot:{robot}"
                check(c.post("/v1/robots", json={"id": robot, "group": "demo"}))
                if key not in tokens:
                    r = c.post("/v1/tokens", json={"name": f"demo-{robot}-{secrets.token_hex(3)}", "role": "robot",
                                                   "robot_id": robot})
                    check(r)
                    tokens[key] = r.json()["token"]

    def _start_cell(self, index: int, robot: str) -> None:
        cell = CellSpec(robot=robot, task=self.cfg.task_of(index), rate_hz=self.cfg.rate_hz,
                        store=self.settings.store_root, inference_url=self.inference.url,
                        token=self.state["tokens"][f"robot:{robot}"], api_url=self.api.url, fast=True,
                        seed=0, max_steps=self.cfg.max_steps, stop_when_done=True, fsync=False,
                        extra={"refill_below": 1})
        env = {**ROS_ENV, "ROS_DOMAIN_ID": str(self.ros_domain + index)}
        for name, cmd in cell.commands().items():
            self.procs.append(start_process(f"{robot}-{name}", cmd, self.logs, env, ros=True))

    def client(self, role: str) -> httpx.Client:
        return httpx.Client(base_url=self.api.url, timeout=60,
                            headers={"Authorization": f"Bearer {self.state['tokens'][role]}"})

    def check(self) -> None:
        """Every process still running, or an error naming the one that died and its log."""
        for p in self.procs:
            if not p.alive():
                raise StackError(f"{p.name} exited with {p.popen.returncode}; last lines of {p.log}:\n"
                                 + "\n".join(p.log_text().splitlines()[-15:]))

    def errors(self) -> dict[str, list[str]]:
        """Error lines each process logged (the demo and the end-to-end test report them)."""
        out = {}
        for p in self.procs:
            bad = [ln for ln in p.log_text().splitlines()
                   if "Traceback" in ln or " ERROR " in ln or "[ERROR]" in ln or "tick failed" in ln]
            if bad:
                out[p.name] = bad
        return out

    def stop(self) -> None:
        for st in self.stations.values():
            try:
                st.close()
            except Exception:
                pass
        self.stations.clear()
        ros = [p for p in self.procs if p.extra.get("ros")]
        for p in ros:  # ROS nodes shut down on SIGINT (the bridge closes its writer and registrations)
            if p.alive():
                os.killpg(p.popen.pid, signal.SIGINT)
        for p in ros:
            try:
                p.popen.wait(15)
            except Exception:
                p.kill()
        for p in reversed([p for p in self.procs if not p.extra.get("ros")]):
            p.stop()


def check(r: httpx.Response) -> None:
    """A refused API call ends the demo with the route, status and message."""
    if r.status_code >= 400:
        raise StackError(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text[:300]}")
