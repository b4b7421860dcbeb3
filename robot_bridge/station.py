"""What a person at a robot's station does, over ROS 2 from a separate process: put the arm on a new
layout, tell the teleoperator what to do (demonstrate, stand by to correct, hands off), start an
episode or a demonstration on the bridge, watch for success or the time limit, and end the episode
with its outcome. Each station joins its robot's ROS domain through its own rclpy context, so one
process can run the stations of a whole simulated fleet, and talks only to its robot's namespace
(`/<robot>/recap_bridge`, `/<robot>/sim_arm`, `/<robot>/scripted_teleop`): stations of other robots
on the same domain are never heard.

An episode that cannot finish (the arm makes no progress for `stall_s`, a node of the cell is gone
as the caller's `alive` check says, a service does not answer) is aborted on the bridge (kept as
`incomplete`, never committed with an outcome) and raised as StationError; restarting the cell and
retrying is the caller's choice (the demo does)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Callable

import rclpy
from rcl_interfaces.srv import ListParameters, SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from std_msgs.msg import String
from std_srvs.srv import SetBool, Trigger

from robot_bridge.ros import robot_namespace


class StationError(RuntimeError):
    pass


@dataclass
class EpisodeOutcome:
    episode_id: str
    kind: str  # demonstration | corrected | autonomous
    success: bool
    steps: int
    layout: int
    wall_s: float


START_READY_S = 15.0  # how long a start refused for want of cameras or a teleoperator is asked again
NOT_READY = ("cameras not ready", "not ready")  # refusals of the bridge that time may lift
TELEOP_MODE = {"demonstration": "demonstrate", "corrected": "correct", "autonomous": "off"}


class Station:
    def __init__(self, domain_id: int, robot: str, *, name: str = "station"):
        self.domain_id, self.robot = domain_id, robot
        self.namespace = ns = robot_namespace(robot)
        self.bridge, self.arm, self.teleop = f"{ns}/recap_bridge", f"{ns}/sim_arm", f"{ns}/scripted_teleop"
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx, domain_id=domain_id)
        self.node = rclpy.create_node(name, namespace=ns, context=self.ctx)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self._lock = threading.Lock()
        self.status: dict = {}
        self.stats: dict = {}
        self.node.create_subscription(String, f"{self.arm}/status", lambda m: self._set("status", m), 50)
        self.node.create_subscription(String, f"{self.bridge}/stats", lambda m: self._set("stats", m), 10)
        self._clients = {}

    def _set(self, attr: str, m: String) -> None:
        with self._lock:
            setattr(self, attr, json.loads(m.data))

    def forget(self) -> None:
        """Drop what the cell's nodes last said (after they were restarted: a dead arm's last status
        must not pass for the new one's)."""
        with self._lock:
            self.status, self.stats = {}, {}

    def _client(self, srv_type, name: str):
        if name not in self._clients:
            self._clients[name] = self.node.create_client(srv_type, name)
        return self._clients[name]

    def spin(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=min(0.05, max(0.0, end - time.monotonic())))

    def call(self, srv_type, name: str, request, timeout: float = 30.0):
        cli = self._client(srv_type, name)
        if not cli.wait_for_service(timeout_sec=timeout):
            raise StationError(f"{name} is not available on ROS domain {self.domain_id} within {timeout:g} s")
        fut = cli.call_async(request)
        self.executor.spin_until_future_complete(fut, timeout_sec=timeout)
        if not fut.done():
            raise StationError(f"{name} did not answer within {timeout} s")
        return fut.result()

    def wait_ready(self, timeout: float = 120.0, topics: tuple[str, ...] = (
            "joint_states", "command", "teleop/command", "teleop/engage", "teleop/mistake")) -> None:
        """Until the bridge, the arm and the teleoperator answer (nodes take seconds to start; a node
        restarted after a crash is answered for by no one but the new process) and each topic between
        them has a publisher and a subscriber (DDS discovery), so the first episode does not start
        while the bridge cannot hear the teleoperator yet."""
        deadline = time.monotonic() + timeout
        for srv_type, name in ((Trigger, f"{self.bridge}/start_episode"), (Trigger, f"{self.arm}/reset"),
                               (SetParameters, f"{self.teleop}/set_parameters")):
            if not self._client(srv_type, name).wait_for_service(timeout_sec=max(0.1, deadline - time.monotonic())):
                raise StationError(f"{name} did not come up within {timeout} s (ROS domain {self.domain_id})")
        # a node killed a moment ago still looks present (its endpoints stay in the DDS graph until its lease
        # runs out, ~20 s), and a request sent to it is lost: only an answer proves each node is the live one
        for node in (self.bridge, self.arm, self.teleop):
            self._answers(node, deadline, timeout)
        topics = tuple(f"{self.namespace}/{t}" for t in topics)
        while True:
            missing = [t for t in topics if not (self.node.count_publishers(t) and self.node.count_subscribers(t))]
            if not missing:
                break
            if time.monotonic() > deadline:
                raise StationError(f"topics without a publisher or a subscriber: {missing} (ROS domain {self.domain_id})")
            self.spin(0.1)
        self.spin(1.0)  # the nodes' own discovery of each other lags the station's by a little

    def _answers(self, node: str, deadline: float, timeout: float) -> None:
        """Until `node` answers a request that changes nothing (its parameter list), asking again every
        second while the earlier requests stay open (a node slower than a second to answer is still
        heard); StationError past `deadline`."""
        cli = self._client(ListParameters, f"{node}/list_parameters")
        sent = []
        try:
            while True:
                if not self.ctx.ok():
                    raise StationError(f"the station's ROS context was shut down while waiting for {node}")
                if cli.wait_for_service(timeout_sec=max(0.1, min(1.0, deadline - time.monotonic()))):
                    sent.append(cli.call_async(ListParameters.Request(depth=1)))
                    ask_again = min(deadline, time.monotonic() + 1.0)
                    while time.monotonic() < ask_again:
                        self.executor.spin_once(timeout_sec=0.05)
                        if any(f.done() for f in sent):
                            return
                if time.monotonic() > deadline:
                    raise StationError(f"{node} did not answer within {timeout:g} s (ROS domain {self.domain_id})")
        finally:
            for f in sent:
                if not f.done():
                    cli.remove_pending_request(f)

    def set_params(self, node: str, **params) -> None:
        req = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in params.items()])
        res = self.call(SetParameters, f"{node}/set_parameters", req)
        bad = [r.reason for r in res.results if not r.successful]
        if bad:
            raise StationError(f"{node} refused {params}: {bad}")

    def set_teleop(self, **params) -> None:
        self.set_params(self.teleop, **params)

    def run_episode(self, kind: str, *, operator: str = "clean", seed: int = 0, layout: int | None = None,
                    timeout_s: float = 300.0, stall_s: float = 30.0,
                    alive: Callable[[], str | None] | None = None) -> EpisodeOutcome:
        """One episode start to end: `kind` is demonstration (the teleoperator drives as `operator`),
        corrected (the policy drives, the teleoperator corrects) or autonomous (no human). `layout`:
        the arm's initial condition (default: the next one). `alive`: says why the cell cannot go on
        (a node exited), else None; asked before the start and while the episode runs."""
        if kind not in TELEOP_MODE:
            raise ValueError(f"kind must be one of {list(TELEOP_MODE)}")
        down = alive() if alive else None
        if down:
            raise StationError(down)
        t0 = time.monotonic()
        if layout is not None:
            self.set_params(self.arm, seed=int(layout))
        self.set_teleop(mode=TELEOP_MODE[kind], operator=operator, seed=seed)
        start_srv = "start_demonstration" if kind == "demonstration" else "start_episode"
        started = self.call(Trigger, f"{self.bridge}/{start_srv}", Trigger.Request())
        ready_by = time.monotonic() + START_READY_S
        # a just-started cell: the bridge has yet to hear its cameras or teleoperator; ask again a while
        while not started.success and started.message.startswith(NOT_READY) and time.monotonic() < ready_by:
            self.spin(0.2)
            started = self.call(Trigger, f"{self.bridge}/{start_srv}", Trigger.Request())
        if not started.success:
            raise StationError(f"the bridge refused to start: {started.message}")
        try:
            reset = json.loads(self.call(Trigger, f"{self.arm}/reset", Trigger.Request()).message)
            layout = int(reset["layout"])
            status = self._wait_done(layout, int(reset["reset"]), t0 + timeout_s, stall_s, alive)
        except BaseException:
            self.abort()
            raise
        ended = self.call(SetBool, f"{self.bridge}/end_episode", SetBool.Request(data=bool(status["success"])))
        if not ended.success:
            raise StationError(f"the bridge refused to end the episode: {ended.message}")
        return EpisodeOutcome(ended.message, kind, bool(status["success"]), int(status["steps"]), layout,
                              time.monotonic() - t0)

    def abort(self) -> str | None:
        """Abort the running episode on the bridge, if it answers (kept as incomplete); its id or None."""
        try:
            r = self.call(Trigger, f"{self.bridge}/abort_episode", Trigger.Request(), timeout=5.0)
        except StationError:
            return None  # the bridge is gone: its episode stays in flight for fsck, never registered
        return r.message if r.success else None

    def _wait_done(self, layout: int, reset: int, deadline: float, stall_s: float,
                   alive: Callable[[], str | None] | None) -> dict:
        progress, progress_at, check_at = None, time.monotonic(), 0.0
        st: dict = {}
        while (now := time.monotonic()) < deadline:
            self.executor.spin_once(timeout_sec=0.05)
            with self._lock:
                st = dict(self.status)
            # this reset's end only: a status sent before it (the last episode's end on the same layout,
            # an arm never reset yet) may still arrive after the reset's answer
            if st.get("reset") == reset and st.get("layout") == layout and st.get("done"):
                return st
            if (st.get("reset"), st.get("steps")) != progress:
                progress, progress_at = (st.get("reset"), st.get("steps")), now
            elif now - progress_at > stall_s:
                raise StationError(f"layout {layout}: the arm made no progress for {stall_s:g} s "
                                   f"(at step {st.get('steps')})")
            if alive and now >= check_at:
                check_at = now + 0.5
                down = alive()
                if down:
                    raise StationError(f"layout {layout}: {down} (at step {st.get('steps')})")
        raise StationError(f"layout {layout}: the episode did not finish in time (at step {st.get('steps')})")

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.ctx)
