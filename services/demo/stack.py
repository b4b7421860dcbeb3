"""The demo's processes, all real and separate: Redis, the control-plane API, a training worker,
the inference server, and per simulated robot a cell (an arm, a scripted teleoperator and a bridge)
in the robot's namespace on a ROS domain of its own. Started in dependency order, watched, and
stopped cleanly (ROS nodes with SIGINT, services with SIGTERM) on Ctrl-C or error.

ROS domains: the robots take the first free domains from `ros_domain` (default 40) up to
DEMO_DOMAINS_LAST (99; from a start above it, up to 232); a domain where other ROS nodes already run (another demo, a test) is skipped
and said so. The tests take theirs from 100 up, so a demo and the test suite never share one, and the
namespaces keep even a shared domain apart. A cell is the unit of recovery: `cell_down` says which
of its processes exited, `restart_cell` replaces all three, `stop_robot` takes it out of the run;
the services (Redis, API, worker, inference) have no such recovery: `check` ends the demo if one
exits."""

from __future__ import annotations

import os
import secrets
import signal
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from robot_bridge.cell import ROS_ENV, CellSpec
from services.demo.config import DemoConfig
from services.launch import (Process, start_process, start_python, start_redis, start_uvicorn, stop_together,
                             wait_healthy)
from services.settings import ServiceSettings


DEMO_DOMAINS_LAST = 99  # the demo's domains end here; tests use 100 and up
ROS_DOMAIN_MAX = 232  # Fast DDS's highest domain id on Linux


class StackError(RuntimeError):
    pass


@dataclass
class DemoStack:
    out: Path
    cfg: DemoConfig
    ros_domain: int = 40
    state: dict = field(default_factory=dict)  # tokens survive a re-run (the control plane does too)
    procs: list[Process] = field(default_factory=list)  # the services
    cells: dict[str, list[Process]] = field(default_factory=dict)  # robot -> its cell's processes
    domains: dict[str, int] = field(default_factory=dict)  # robot -> ROS domain
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
        # the cells start while the inference server loads (its URL is known; a bridge asks again
        # until it answers), then both are waited for
        self.inference = start_uvicorn("inference", "services.inference.server:create_app", self.logs,
                                       self.settings.to_env(), wait=False)
        self.procs.append(self.inference)
        self._take_domains(say)
        for robot in self.cfg.robot_ids():
            self._start_cell(robot)
        wait_healthy(self.inference)
        say(f"{self.cfg.robots} simulated robots up ({', '.join(f'{r} on ROS domain {d}' for r, d in self.domains.items())}); "
            "waiting for their nodes")
        from robot_bridge.station import Station, StationError

        for robot in self.cfg.robot_ids():
            st = Station(self.domains[robot], robot)
            self.stations[robot] = st
            try:
                st.wait_ready()
            except StationError as e:  # e.g. DDS discovery that never completes between some endpoints
                say(f"{robot}: {e}; restarting its nodes and its station once")
                st.close()
                self.stations[robot] = Station(self.domains[robot], robot)
                self.restart_cell(robot)
        self.check()

    def _take_domains(self, say) -> None:
        """The first free ROS domains from `ros_domain` on, one per robot."""
        from robot_bridge.ros import busy_ros_domains

        robots, free = self.cfg.robot_ids(), []
        last = DEMO_DOMAINS_LAST if self.ros_domain <= DEMO_DOMAINS_LAST else ROS_DOMAIN_MAX
        candidates = iter(range(self.ros_domain, last + 1))
        while len(free) < len(robots):
            batch = [d for _, d in zip(range(len(robots) - len(free) + 2), candidates)]
            if not batch:
                raise StackError(f"no {len(robots)} free ROS domains in {self.ros_domain}..{last}; "
                                 "pick another start with --ros-domain")
            busy = busy_ros_domains(batch)
            for d, nodes in busy.items():
                say(f"ROS domain {d} is in use ({', '.join(nodes[:3])}{' ...' if len(nodes) > 3 else ''}): skipped")
            free += [d for d in batch if d not in busy]
        self.domains = dict(zip(robots, free))

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

    def _start_cell(self, robot: str) -> None:
        cell = CellSpec(robot=robot, task=self.cfg.task_of(self.cfg.robot_ids().index(robot)), rate_hz=self.cfg.rate_hz,
                        store=self.settings.store_root, inference_url=self.inference.url,
                        token=self.state["tokens"][f"robot:{robot}"], api_url=self.api.url, fast=True,
                        seed=0, max_steps=self.cfg.max_steps, stop_when_done=True, fsync=False,
                        image=self.cfg.camera[0] if self.cfg.camera else 0,
                        image_width=self.cfg.camera[1] if self.cfg.camera else 0, extra={"refill_below": 1})
        env = {**ROS_ENV, "ROS_DOMAIN_ID": str(self.domains[robot])}
        self.cells[robot] = [start_process(f"{robot}-{name}", cmd, self.logs, env, ros=True)
                             for name, cmd in cell.commands().items()]

    def cell_down(self, robot: str) -> str | None:
        """Which of the robot's processes exited (and how), or None while all run."""
        dead = [f"{p.name} exited with {p.popen.returncode}" for p in self.cells.get(robot, []) if not p.alive()]
        return "; ".join(dead) or None

    def restart_cell(self, robot: str) -> None:
        """Stop what is left of the robot's cell and start all of it again; its station waits until the
        new nodes answer."""
        stop_together(self.cells.pop(robot, []), signal.SIGINT)
        self._start_cell(robot)
        st = self.stations[robot]
        st.forget()
        st.wait_ready()

    def stop_robot(self, robot: str) -> None:
        """Take the robot out of the run: its station closes, its cell stops."""
        st = self.stations.pop(robot, None)
        if st is not None:
            try:
                st.close()
            except Exception:
                pass
        stop_together(self.cells.pop(robot, []), signal.SIGINT)

    def client(self, role: str) -> httpx.Client:
        return httpx.Client(base_url=self.api.url, timeout=60,
                            headers={"Authorization": f"Bearer {self.state['tokens'][role]}"})

    def check(self) -> None:
        """Every service still running, or an error naming the one that died and its log (cells recover
        on their own: DemoLoop)."""
        for p in self.procs:
            if not p.alive():
                raise StackError(f"{p.name} exited with {p.popen.returncode}; last lines of {p.log}:\n"
                                 + "\n".join(p.log_text().splitlines()[-15:]))

    def errors(self) -> dict[str, list[str]]:
        """Error lines each process logged (the demo and the end-to-end test report them)."""
        out = {}
        for p in self.procs + [p for cell in self.cells.values() for p in cell]:
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
        stop_together([p for cell in self.cells.values() for p in cell], signal.SIGINT)
        for p in reversed(self.procs):
            p.stop()


def check(r: httpx.Response) -> None:
    """A refused API call ends the demo with the route, status and message."""
    if r.status_code >= 400:
        raise StackError(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text[:300]}")
