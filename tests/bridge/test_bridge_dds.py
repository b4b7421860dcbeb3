"""The bridge over real DDS, every node in its own process: simulated arm, scripted teleoperator,
bridge; the test drives episodes through the bridge's ROS 2 services like the CLI does. Each test
takes a ROS domain from TEST_DOMAINS (the demo never uses them) and a namespace of its own, so tests
run beside a demo, or beside another test run on the same domain, without meeting."""

from __future__ import annotations

import json
import os
import random
import secrets
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from data.schema import ActionSource
from data.store import EpisodeStore


TEST_DOMAINS = (100, 200)  # the demo takes free domains from 40 up to 99 (services/demo/stack.py)


def test_robot_ids_name_ros_namespaces():
    from robot_bridge.ros import RobotNameError, robot_namespace

    assert robot_namespace("sim-arm-0") == "/sim_arm_0" and robot_namespace("cell-a.arm_1") == "/cell_a_arm_1"
    for bad in ("", "1arm", "arm 1", "arm/1"):
        with pytest.raises(RobotNameError, match="cannot name a ROS namespace"):
            robot_namespace(bad)


@pytest.fixture
def ros_env(monkeypatch):
    env = {"ROS_DOMAIN_ID": str(random.randint(*TEST_DOMAINS)), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
           "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp", "MUJOCO_GL": "osmesa", "PYTHONUNBUFFERED": "1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


@pytest.fixture
def ns() -> str:
    """This test's own ROS namespace (a robot's namespace, as a cell's nodes run in)."""
    return f"/t_{secrets.token_hex(4)}"


def _node(module: str, params: dict, log: Path, ns: str) -> subprocess.Popen:
    from robot_bridge.ros import namespace_args

    args = [sys.executable, "-m", module, "--ros-args"]
    for k, v in params.items():
        args += ["-p", f"{k}:={json.dumps(v)}"]
    return subprocess.Popen(args + namespace_args(ns), stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            env=os.environ.copy())


class Driver:
    """The test's own ROS 2 node, in the cell's namespace (relative names are the cell's): calls the
    bridge's services, publishes malformed input, reads stats."""

    def __init__(self, ns: str):
        import rclpy
        from std_msgs.msg import String

        rclpy.init()
        self.rclpy = rclpy
        self.node = rclpy.create_node("test_driver", namespace=ns)
        self.stats: list[dict] = []
        self.node.create_subscription(String, "recap_bridge/stats", lambda m: self.stats.append(json.loads(m.data)), 10)

    def call(self, srv_type, name: str, request, timeout: float = 30.0):
        cli = self.node.create_client(srv_type, name)
        assert cli.wait_for_service(timeout_sec=timeout), f"{name} not available"
        fut = cli.call_async(request)
        self.rclpy.spin_until_future_complete(self.node, fut, timeout_sec=timeout)
        assert fut.done(), f"{name} did not answer"
        return fut.result()

    def wait_ready(self, publishers: tuple[str, ...] = (), timeout: float = 120.0) -> None:
        """Until the bridge reports a fresh joint state and each named topic has a publisher: a node
        starting on a cold machine (first imports of MuJoCo and torch) takes many seconds, and an
        episode started before the arm talks records nothing."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            age = self.stats[-1].get("state_age_ms") if self.stats else None
            if age is not None and age < 500 and self.stats[-1].get("cameras_ready", True) and all(self.node.count_publishers(t) for t in publishers):
                self.spin(0.5)  # the nodes' own discovery of each other lags ours by a little
                return
            self.spin(0.1)
        raise AssertionError(f"not ready in {timeout} s: last stats {self.stats[-1:]}, "
                             f"publishers {[(t, self.node.count_publishers(t)) for t in publishers]}")

    def spin(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.rclpy.spin_once(self.node, timeout_sec=0.05)

    def close(self) -> None:
        self.node.destroy_node()
        self.rclpy.shutdown()


@pytest.mark.slow
def test_bridge_records_holds_and_corrections_over_dds(ros_env, ns, tmp_path):
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray
    from std_srvs.srv import SetBool, Trigger

    store_root = tmp_path / "home" / "store"
    procs = [
        _node("robot_bridge.sim.arm_node", {"task": "push-v3", "rate_hz": 30.0}, tmp_path / "arm.log", ns),
        _node("robot_bridge.sim.teleop_node", {"task": "push-v3"}, tmp_path / "teleop.log", ns),
        _node("robot_bridge.bridge_node", {"robot_id": "sim-arm-0", "state_dim": 39, "action_dim": 4,
                                           "store_root": str(store_root), "task": "push-v3", "instruction": "push",
                                           "hold_keep": [3], "fsync": False, "realtime_priority": 40}, tmp_path / "bridge.log", ns),
    ]
    d = Driver(ns)
    try:
        d.wait_ready(publishers=(f"{ns}/teleop/engage", f"{ns}/teleop/command"))
        start = d.call(Trigger, "recap_bridge/start_episode", Trigger.Request())
        assert start.success, start.message
        # malformed input while the episode runs: refused and counted, never sent to the arm
        bad_js = d.node.create_publisher(JointState, "joint_states", 10)
        bad_cmd = d.node.create_publisher(Float64MultiArray, "teleop/command", 10)
        for _ in range(5):
            bad_js.publish(JointState(position=[0.0] * 7))
            bad_js.publish(JointState(position=[float("nan")] * 39))
            bad_cmd.publish(Float64MultiArray(data=[0.0, 1.0]))
            d.spin(0.1)
        d.spin(5.0)
        end = d.call(SetBool, "recap_bridge/end_episode", SetBool.Request(data=False))
        assert end.success, end.message
        relabel = d.call(SetBool, "recap_bridge/label_last_episode", SetBool.Request(data=True))
        assert relabel.success and relabel.message == end.message
        d.spin(1.5)
    finally:
        d.close()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:  # reported below, but never left running
                p.kill()
                raise
    logs = {n: (tmp_path / f"{n}.log").read_text() for n in ("arm", "teleop", "bridge")}
    for name, text in logs.items():
        assert "Traceback" not in text and "tick failed" not in text, f"{name}:\n{text[-3000:]}"
    ep = EpisodeStore(store_root).open(end.message)
    assert ep.info.outcome == "success" and ep.labels[-1]["labeller"] == "bridge:sim-arm-0"  # relabelled later
    src = ep.action_source
    assert len(ep) > 100, (len(ep), d.stats[-1:], logs["bridge"][-2000:])  # ~30 Hz for ~5.5 s
    corr = src == ActionSource.CORRECTION
    hold = src == ActionSource.HOLD
    assert corr.sum() >= 20 and hold.sum() >= 20 and (corr | hold).all()  # no policy: the human or holding
    assert np.abs(ep.action[corr][:, :3]).max() > 0.1 and np.allclose(ep.action[hold][:, :3], 0)
    # corrections come in takeovers of contiguous ticks
    starts = np.flatnonzero(np.diff(corr.astype(int)) == 1)
    assert 1 <= len(starts) + int(corr[0]) <= 3
    assert "engaged" in logs["teleop"] and "released" in logs["teleop"]
    s = d.stats[-1]
    assert s["refused"]["joint_state"] >= 10 and s["refused"]["teleop"] >= 5
    assert np.all(np.isfinite(ep.state))
    # asked for, the control thread runs real-time wherever this machine lets a process have it
    may_rt = subprocess.run([sys.executable, "-c", "import os; os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(40))"],
                            capture_output=True).returncode == 0
    assert s["control_scheduling"] == ("SCHED_FIFO 40" if may_rt else "normal"), s


@pytest.mark.slow
def test_bridge_runs_the_deployed_policy_survives_a_server_outage_and_a_sigkill(ros_env, ns, stack, tmp_path):
    """Policy chunks from the real inference server, with the version in every tick; the server
    stopped mid-episode -> hold, flagged late -> policy again when it is back; the API down -> the
    registration waits on disk; the bridge SIGKILLed mid-episode -> committed episodes intact, the
    in-flight one recovered by fsck, the waiting registration delivered after the restart."""
    import signal

    from std_msgs.msg import Float64MultiArray
    from std_srvs.srv import SetBool, Trigger

    from data.fsck import fsck
    from services.launch import start_uvicorn
    from tests.services.conftest import policy_artifact

    with stack.client("researcher") as c:
        v = c.post("/v1/versions", json={"artifact_dir": str(policy_artifact(tmp_path / "p", 1, state_dim=39,
                                                                              action_dim=4, chunk=8))}).json()["id"]
    token = stack.robot_token("sim-arm-1")
    with stack.client("operator") as c:
        c.post("/v1/deployments", json={"version": v})
    inf = stack.start_inference()
    store_root = Path(stack.settings.store_root)
    token_file = tmp_path / "sim-arm-1.token"  # never a ROS parameter: anyone on the domain reads those
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    params = {"robot_id": "sim-arm-1", "state_dim": 39, "action_dim": 4, "store_root": str(store_root),
              "task": "push-v3", "instruction": "push", "hold_keep": [3], "fsync": False,
              "inference_url": inf.url, "inference_token_file": str(token_file), "api_url": stack.api.url,
              "deadline_ms": 150.0, "execute": 4}
    arm = _node("robot_bridge.sim.arm_node", {"task": "push-v3", "rate_hz": 30.0}, tmp_path / "arm.log", ns)
    bridge = _node("robot_bridge.bridge_node", params, tmp_path / "bridge.log", ns)
    d = Driver(ns)
    commands: list[tuple[float, list[float]]] = []  # what the arm is sent, as it arrives
    d.node.create_subscription(Float64MultiArray, "command", lambda m: commands.append((time.monotonic(), list(m.data))), 100)
    try:
        d.wait_ready()
        assert d.call(Trigger, "recap_bridge/start_episode", Trigger.Request()).success
        d.spin(2.0)
        inf.stop()  # the inference server goes away mid-episode ...
        d.spin(2.0)
        stack.extra.append(start_uvicorn("inference-2", "services.inference.server:create_app", stack.logs,
                                         stack.env(), port=inf.port))  # ... and comes back
        d.spin(2.0)
        ending = time.monotonic()
        first = d.call(SetBool, "recap_bridge/end_episode", SetBool.Request(data=True)).message
        d.spin(1.0)
        # the policy drove until the end: the arm's last command is one hold (zero deltas), then it is left alone
        assert [t for t, _ in commands if t > ending] and np.allclose(commands[-1][1][:3], 0.0), commands[-3:]
        assert not [t for t, _ in commands if t > ending + 0.5]
        api_port = stack.api.port
        stack.api.stop()  # the API is down: the next registration waits on disk
        assert d.call(Trigger, "recap_bridge/start_episode", Trigger.Request()).success
        d.spin(2.0)
        second = d.call(SetBool, "recap_bridge/end_episode", SetBool.Request(data=False)).message
        assert d.call(Trigger, "recap_bridge/start_episode", Trigger.Request()).success
        d.spin(2.0)
        os.kill(bridge.pid, signal.SIGKILL)  # the bridge dies mid-episode
        bridge.wait(10)
        pending = store_root.parent / "pending_registrations" / "sim-arm-1"
        assert [p.stem for p in pending.glob("*.json")] == [second]
        stack.api = start_uvicorn("api-2", "services.api.app:create_app", stack.logs, stack.env(), port=api_port)
        bridge = _node("robot_bridge.bridge_node", params, tmp_path / "bridge2.log", ns)
        deadline = time.monotonic() + 60
        while list(pending.glob("*.json")) and time.monotonic() < deadline:
            d.spin(0.5)
    finally:
        d.close()
        for p in (arm, bridge):
            p.terminate()
            p.wait(10)
    assert not list(pending.glob("*.json")), "the waiting registration was not delivered after the restart"
    with stack.client("operator") as c:
        registered = {e["id"] for e in c.get("/v1/episodes", params={"robot": "sim-arm-1"}).json()}
    assert {first, second} <= registered
    store = EpisodeStore(store_root)
    ep1 = store.open(first)
    src = ep1.action_source
    pol = np.flatnonzero(src == ActionSource.POLICY)
    assert len(pol) > 30 and {ep1.policy_version(int(t)) for t in pol} == {v}
    hold = np.flatnonzero(src == ActionSource.HOLD)
    assert len(hold) >= 30  # ~2 s of outage at 30 Hz: held
    assert (pol > hold.max()).any()  # control came back to the policy after the outage
    checksum = ep1.checksum
    report = fsck(store, repair=True)
    assert len(report.recovered) == 1, report.to_dict()
    (in_flight,) = report.recovered
    assert in_flight not in (first, second) and store.open(in_flight).info.status == "incomplete"
    assert store.open(first).checksum == checksum  # committed episodes untouched by the kill
    bridge_log = (tmp_path / "bridge.log").read_text()
    assert "tick failed" not in bridge_log


def _recording_tap(target: str):
    """A transparent HTTP recorder between the bridge and the inference server: each act request's
    body is kept (decoded with the wire codec) and forwarded unchanged; the server's answer goes back
    unchanged. Returns (server, the decoded act requests, the server's statuses of them)."""
    import http.server
    import threading

    import httpx

    from data.wire import decode_request

    seen, answered, client = [], [], httpx.Client(timeout=30)

    class Forward(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self, method: str) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            if self.path == "/v1/act":
                seen.append(decode_request(body, binary=True))
            r = client.request(method, target + self.path, content=body or None,
                               headers={k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")})
            if self.path == "/v1/act":  # the statuses of act requests only (not the spec's)
                answered.append(r.status_code)
            try:
                self.send_response(r.status_code)
                self.send_header("Content-Type", r.headers.get("content-type", "application/octet-stream"))
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)
            except (BrokenPipeError, ConnectionResetError):  # the bridge gave up waiting (its timeout)
                pass

        def do_GET(self):
            self._forward("GET")

        def do_POST(self):
            self._forward("POST")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forward)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen, answered


@pytest.mark.slow
def test_a_policy_reading_two_ticks_drives_the_arm_with_each_requests_history_the_tick_before(ros_env, ns, stack, tmp_path):
    """A lerobot:diffusion policy with n_obs_steps 2, served by the real inference server: the bridge
    learns from the server that it reads two ticks, and every request carries the tick before it in
    `history` (the episode's first tick standing in at its start): the state and the camera frame
    (from the camera process's ring) that tick recorded. The arm is driven by the policy, not
    held. States the policy cannot take are refused by the server (422): counted in ~/stats with the
    server's message, and logged once, not once per request."""
    import httpx
    from sensor_msgs.msg import Image, JointState
    from std_srvs.srv import SetBool, Trigger

    from data.wire import to_array
    from tests.services.conftest import diffusion_artifact

    with stack.client("researcher") as c:
        v = c.post("/v1/versions", json={"artifact_dir": str(diffusion_artifact(tmp_path / "p", 3))}).json()["id"]
    token = stack.robot_token("hist-arm")
    with stack.client("operator") as c:
        assert c.post("/v1/deployments", json={"version": v}).status_code == 201
    inf = stack.start_inference(OMP_NUM_THREADS="1")  # answers in time on a small, shared machine
    deadline = time.monotonic() + 120
    while v not in httpx.get(inf.url + "/v1/serving", timeout=10).json()["versions"]:
        assert time.monotonic() < deadline, "the version was never served"
        time.sleep(0.2)
    tap, requests, statuses = _recording_tap(inf.url)
    token_file = tmp_path / "hist-arm.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    store_root = tmp_path / "store"
    bridge = _node("robot_bridge.bridge_node", {
        "robot_id": "hist-arm", "state_dim": 4, "action_dim": 3, "store_root": str(store_root), "fsync": False,
        "camera_names": ["wrist"], "camera_topics": ["wrist/image"], "camera_height": 48, "camera_width": 64,
        "inference_url": f"http://127.0.0.1:{tap.server_address[1]}", "inference_token_file": str(token_file),
        "instruction": "push it"}, tmp_path / "bridge.log", ns)
    d = Driver(ns)
    js_pub = d.node.create_publisher(JointState, "joint_states", 10)
    cam_pub = d.node.create_publisher(Image, "wrist/image", 10)
    k, bad = 0, False

    def feed():  # a scripted arm and camera: state k / 100, a flat frame whose grey level counts up with k
        nonlocal k
        stamp = d.node.get_clock().now().to_msg()
        js = JointState(position=[1e4 if bad else k / 100] * 4)
        js.header.stamp = stamp
        js_pub.publish(js)
        img = Image(height=48, width=64, encoding="rgb8", step=64 * 3,
                    data=bytes([min(250, 20 + k // 2)]) * (48 * 64 * 3))
        img.header.stamp = stamp
        cam_pub.publish(img)
        k += 1

    d.node.create_timer(1 / 60, feed)
    try:
        d.wait_ready()
        while d.stats[-1].get("policy_n_obs_steps") != 2:  # learnt from the server's spec of the served version
            assert time.monotonic() < deadline + 60, d.stats[-1]
            d.spin(0.2)
        assert d.call(Trigger, "recap_bridge/start_episode", Trigger.Request()).success
        until = time.monotonic() + 150
        while statuses.count(200) < 8 and time.monotonic() < until:  # a few chunks, however loaded the machine
            d.spin(0.2)
        good = len(requests)
        bad = True  # a state outside what the policy was trained on: every request refused
        d.spin(1.5)
        stats = d.stats[-1]
        episode = d.call(SetBool, "recap_bridge/end_episode", SetBool.Request(data=True)).message
    finally:
        d.close()
        bridge.terminate()
        bridge.wait(10)
        tap.shutdown()
    ep = EpisodeStore(store_root).open(episode)
    pol = np.flatnonzero(ep.action_source == ActionSource.POLICY)
    assert len(pol) >= 16 and {ep.policy_version(int(t)) for t in pol} == {v}  # the policy drove the arm
    assert np.abs(ep.action[pol]).max() > 0.01
    # every request: the current tick and, in `history`, the tick before it (the first tick itself at the start)
    first = requests[:good]
    assert len(first) >= 8 and first[0].seed == 0
    matched = 0
    for r in first:
        j = r.seed  # the bridge's tick index: the episode's tick (its first episode)
        assert r.tick == j  # the tick within the episode (a chunk critic's time input)
        assert len(r.history) == 1, len(r.history)
        state, past = to_array(r.state, "state", "float32", (4,)), r.history[0]
        assert np.array_equal(state, ep.state[j])
        assert np.array_equal(to_array(past.state, "state", "float32", (4,)), ep.state[max(j - 1, 0)]), j
        now_frame = to_array(r.images["wrist"], "wrist", "uint8", (48, 64, 3))
        past_frame = to_array(past.images["wrist"], "wrist", "uint8", (48, 64, 3))
        assert past_frame.min() == past_frame.max() <= now_frame.min()  # a frame as published, never a newer one
        # the frames those ticks recorded (JPEG of a flat frame): the same stamps, so the same frames
        matched += (abs(float(now_frame[0, 0, 0]) - ep.image("wrist", j).mean()) < 1.5
                    and abs(float(past_frame[0, 0, 0]) - ep.image("wrist", max(j - 1, 0)).mean()) < 1.5)
    assert matched >= 0.95 * len(first), (matched, len(first))
    # refused requests: counted, with the server's message, logged once each, never once per request
    assert stats["policy_rejected"] >= 3 and "outside" in stats["policy_last_rejection"], stats
    log = (tmp_path / "bridge.log").read_text()
    assert 1 <= log.count("refused a request (422)") < stats["policy_rejected"], log[-3000:]
    assert "Traceback" not in log and "tick failed" not in log


@pytest.mark.slow
@pytest.mark.parametrize("fast", [False, True], ids=["real-time", "sim-time"])
def test_recap_bridge_up_start_end_from_the_cli(ros_env, tmp_path, fast):
    import signal

    robot = f"test-{secrets.token_hex(4)}"  # this test's namespace: /test_<hex>

    def recap(*args, **kw):
        return subprocess.run([sys.executable, "-m", "data.cli_root", "bridge", *args, "--robot", robot],
                              capture_output=True, text=True, timeout=60, **kw)

    up = subprocess.Popen([sys.executable, "-m", "data.cli_root", "bridge", "up", "--robot", robot, "--task", "push-v3", "--store",
                           str(tmp_path / "store"), "--logs", str(tmp_path / "logs"), "--fast" if fast else "--no-fast",
                           *([] if fast else ["--image", "24"])],  # real time with a camera: ready once it delivers
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        while not (lines and lines[-1].startswith(("ready", "not ready"))) and up.poll() is None:
            lines.append(up.stdout.readline())
        assert lines[-1].startswith("ready"), "".join(lines)
        assert ("the cameras deliver" in lines[-1]) == (not fast), lines[-1]
        started = recap("start")
        assert started.returncode == 0 and started.stdout.startswith("started "), started.stdout + started.stderr
        assert recap("start").returncode == 1  # one episode at a time
        other = subprocess.run([sys.executable, "-m", "data.cli_root", "bridge", "end", "--success", "--robot",
                                f"other-{robot}", "--wait", "1"], capture_output=True, text=True, timeout=60)
        assert other.returncode == 2 and "no bridge answering" in other.stderr  # another robot's: nobody there
        time.sleep(2.0)
        ended = recap("end", "--failure")
        assert ended.returncode == 0, ended.stdout + ended.stderr
        episode = ended.stdout.split()[-1]
    finally:
        up.send_signal(signal.SIGTERM)
        out, _ = up.communicate(timeout=30)
    assert up.returncode == 0, "".join(lines) + out
    ep = EpisodeStore(tmp_path / "store").open(episode)
    assert len(ep) > 30 and ep.info.outcome == "failure" and ep.info.robot_id == robot
    assert ep.cameras == ([] if fast else ["front"])
    dt = np.diff(ep.timestamps_ns)
    assert np.all(dt > 0)
    if fast:  # simulated time: exactly one control period per tick, however fast the wall clock went
        assert np.all(dt == dt[0]) and abs(dt[0] - 1e9 / 30) < 1e3
        assert (ep.action_source == ActionSource.CORRECTION).any()  # the teleoperator ran on sim time too
    for name in ("arm", "bridge", "teleop"):
        assert "Traceback" not in (tmp_path / "logs" / f"{name}.log").read_text()


@pytest.mark.slow
def test_recap_bridge_up_killed_with_sigkill_takes_its_nodes_with_it(ros_env, tmp_path):
    """No orphaned nodes holding the domain and the robot's node names: the cell's nodes are
    registered with the command's reaper (services/reaper.py), which ends them when the command dies."""
    import re
    import signal

    import psutil

    def gone(p: psutil.Process) -> bool:
        try:
            return p.status() == psutil.STATUS_ZOMBIE  # ended, waiting for whoever adopted it
        except psutil.NoSuchProcess:
            return True

    up = subprocess.Popen([sys.executable, "-m", "data.cli_root", "bridge", "up", "--robot", f"test-{secrets.token_hex(4)}",
                           "--no-teleop", "--store", str(tmp_path / "store"), "--logs", str(tmp_path / "logs")],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    nodes: list[psutil.Process] = []
    try:
        lines = [""]
        while not lines[-1].startswith(("up:", "ready", "not ready")) and up.poll() is None:
            lines.append(up.stdout.readline())
        nodes = [psutil.Process(int(pid)) for pid in re.findall(r"\(pid (\d+)\)", lines[-1])]
        assert lines[-1].startswith("up:") and len(nodes) == 2, "".join(lines)  # the arm and the bridge
        while not lines[-1].startswith(("ready", "not ready")) and up.poll() is None:
            lines.append(up.stdout.readline())
        assert lines[-1].startswith("ready"), "".join(lines)
        assert {p.pid for p in nodes} <= {c.pid for c in psutil.Process(up.pid).children()}
        assert not any(gone(p) for p in nodes)
        up.send_signal(signal.SIGKILL)
        up.wait(10)
        killed = time.monotonic()
        while not all(gone(p) for p in nodes) and time.monotonic() < killed + 20:  # SIGTERM, SIGKILL after 10 s
            time.sleep(0.1)
        assert all(gone(p) for p in nodes), [(p.pid, gone(p)) for p in nodes]
    finally:
        up.kill()
        up.wait()
        for p in nodes:
            try:
                p.kill()  # psutil checks the process is still the one started (no recycled pid)
            except psutil.NoSuchProcess:
                pass


@pytest.mark.slow
def test_recorded_ticks_match_published_samples_and_commands_with_known_stamps(ros_env, ns, tmp_path):
    """A scripted robot: joint states numbered k with known stamps, an engage window with a known
    teleop command. Each recorded tick holds the newest sample stamped at or before it (never a
    later one), corrections exactly while engaged, and the commands the arm received in order."""
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Bool, Float64MultiArray
    from std_srvs.srv import SetBool, Trigger

    store_root = tmp_path / "store"
    bridge = _node("robot_bridge.bridge_node", {"robot_id": "scripted", "state_dim": 4, "action_dim": 4,
                                                "store_root": str(store_root), "fsync": False,
                                                "control_rate_hz": 50.0}, tmp_path / "bridge.log", ns)
    d = Driver(ns)
    commands: list[list[float]] = []
    d.node.create_subscription(Float64MultiArray, "command", lambda m: commands.append(list(m.data)), 100)
    js_pub = d.node.create_publisher(JointState, "joint_states", 10)
    stamps: dict[int, int] = {}
    human = [0.5, -0.5, 0.25, 1.0]
    k = 0

    def publish_state():
        nonlocal k
        now = d.node.get_clock().now()
        msg = JointState(position=[float(k)] * 4)
        msg.header.stamp = now.to_msg()
        stamps[k] = now.nanoseconds
        js_pub.publish(msg)
        k += 1

    d.node.create_timer(0.007, publish_state)  # ~140 Hz, unsynchronised with the 50 Hz bridge
    try:
        d.wait_ready()
        # nobody could drive yet: a demonstration is refused (it would record holds only), an episode is not
        demo = d.call(Trigger, "recap_bridge/start_demonstration", Trigger.Request())
        assert not demo.success and demo.message == "not ready: no teleoperator heard yet on teleop/command, teleop/engage"
        engage_pub = d.node.create_publisher(Bool, "teleop/engage", 10)
        teleop_pub = d.node.create_publisher(Float64MultiArray, "teleop/command", 10)
        assert d.call(Trigger, "recap_bridge/start_episode", Trigger.Request()).success
        d.spin(1.0)
        t_on = d.node.get_clock().now().nanoseconds
        for _ in range(40):
            teleop_pub.publish(Float64MultiArray(data=human))
            engage_pub.publish(Bool(data=True))
            d.spin(0.025)
        engage_pub.publish(Bool(data=False))
        t_off = d.node.get_clock().now().nanoseconds
        d.spin(1.0)
        episode = d.call(SetBool, "recap_bridge/end_episode", SetBool.Request(data=True)).message
        d.spin(0.5)
    finally:
        d.close()
        bridge.terminate()
        bridge.wait(10)
    ep = EpisodeStore(store_root).open(episode)
    ts, state, src, act = ep.timestamps_ns, ep.state, ep.action_source, ep.action
    ks = state[:, 0].astype(int)
    assert (state == ks[:, None]).all() and np.all(np.diff(ks) >= 0)
    sample_stamps = np.array([stamps[x] for x in ks])
    assert np.all(sample_stamps <= ts), "a tick used a sample stamped after it"
    # and a fresh one: the stream is 140 Hz (a sample every 7 ms); the tail allows a loaded 2-core
    # machine to delay the scripted publisher's own timer now and then
    age = ts - sample_stamps
    assert np.median(age) < 20e6 and np.percentile(age, 99) < 100e6, (np.median(age), np.percentile(age, 99))
    corr = src == ActionSource.CORRECTION
    assert np.allclose(act[corr], human) and np.allclose(act[~corr], 0)
    slack = 60_000_000  # DDS delivery of the engage message
    assert corr[(ts > t_on + slack) & (ts < t_off)].all()
    assert not corr[(ts < t_on) | (ts > t_off + slack)].any()
    assert corr.sum() >= 30
    # the arm received exactly the recorded actions, in order (commands between episodes: none here)
    assert np.allclose(np.asarray(commands[-len(ep):]), act, atol=1e-6) and len(commands) >= len(ep)


@pytest.mark.slow
@pytest.mark.parametrize("camera_process", [True, False], ids=["camera_process", "in_bridge"])
def test_compressed_cameras_in_joint_trajectory_out(ros_env, ns, tmp_path, camera_process):
    """A ros2_control-style configuration: JPEG CompressedImage cameras recorded, JointTrajectory commands
    (position hold) published with the configured joint names; an unknown-size frame is refused. While the
    arm talks and the camera has sent nothing, no episode starts (with the reason) and a takeover still
    drives the arm. Cameras received and recorded by the bridge's camera process (the default) or in its own
    process."""
    import simplejpeg
    from sensor_msgs.msg import CompressedImage, JointState
    from std_msgs.msg import Bool, Float64MultiArray
    from std_srvs.srv import SetBool, Trigger
    from trajectory_msgs.msg import JointTrajectory

    store_root = tmp_path / "store"
    bridge = _node("robot_bridge.bridge_node", {
        "robot_id": "r2c", "state_dim": 3, "action_dim": 3, "store_root": str(store_root), "fsync": False,
        "camera_names": ["wrist"], "camera_topics": ["wrist/image/compressed"], "camera_compressed": True,
        "camera_height": 48, "camera_width": 64, "command_type": "joint_trajectory",
        "joint_names": ["j1", "j2", "j3"], "hold_mode": "position", "action_low": [-1.0], "action_high": [1.0],
        "camera_process": camera_process}, tmp_path / "bridge.log", ns)
    d = Driver(ns)
    got: list[JointTrajectory] = []
    d.node.create_subscription(JointTrajectory, "command", got.append, 100)
    js_pub = d.node.create_publisher(JointState, "joint_states", 10)
    cam_pub = d.node.create_publisher(CompressedImage, "wrist/image/compressed", 10)
    frame = np.zeros((48, 64, 3), np.uint8)
    frame[:, :32] = (200, 40, 40)
    jpeg = simplejpeg.encode_jpeg(frame, quality=95)
    bad = simplejpeg.encode_jpeg(np.zeros((10, 10, 3), np.uint8))
    camera_on = []  # the camera starts late: the arm talks first
    camera_ahead = []  # then its clock runs an hour ahead of the bridge's

    def feed():
        stamp = d.node.get_clock().now().to_msg()
        js = JointState(name=["j2", "j1", "j3"], position=[-0.2, 0.1, 0.3])  # by name, any order
        js.header.stamp = stamp
        js_pub.publish(js)
        if camera_ahead and not camera_on:
            img = CompressedImage(format="jpeg", data=jpeg)
            img.header.stamp.sec = stamp.sec + 3600
            cam_pub.publish(img)
        if not camera_on:
            return
        img = CompressedImage(format="jpeg", data=jpeg)
        img.header.stamp = stamp
        cam_pub.publish(img)
        cam_pub.publish(CompressedImage(format="jpeg", data=bad))

    d.node.create_timer(0.02, feed)
    try:
        # the arm talks, the camera has delivered nothing: no episode starts (it would record nothing and
        # command nothing until the first frame), with the reason
        deadline = time.monotonic() + 120
        while not (d.stats and d.stats[-1].get("state_age_ms") is not None and d.stats[-1]["state_age_ms"] < 500):
            assert time.monotonic() < deadline, d.stats[-1:]
            d.spin(0.1)
        assert d.stats[-1]["cameras_ready"] is False
        early = d.call(Trigger, "recap_bridge/start_episode", Trigger.Request())
        assert not early.success and early.message.startswith("cameras not ready: no frame yet from wrist"), early.message
        # a takeover does not wait for the camera: the human's command reaches the arm, clipped to its limits
        assert not got  # nobody drives: the arm is left alone
        engage_pub = d.node.create_publisher(Bool, "teleop/engage", 10)
        teleop_pub = d.node.create_publisher(Float64MultiArray, "teleop/command", 10)
        deadline = time.monotonic() + 30
        while not any(np.allclose(g.points[0].positions, [0.25, -0.5, 1.0]) for g in got):
            assert time.monotonic() < deadline, [list(g.points[0].positions) for g in got[-3:]]
            engage_pub.publish(Bool(data=True))
            teleop_pub.publish(Float64MultiArray(data=[0.25, -0.5, 3.0]))
            d.spin(0.05)
        engage_pub.publish(Bool(data=False))
        d.spin(0.5)
        # released: one hold (position mode: the measured joints), then the arm is left alone again
        sent = len(got)
        assert np.allclose(got[-1].points[0].positions, [0.1, -0.2, 0.3]), got[-1].points[0].positions
        d.spin(0.3)
        assert len(got) == sent
        # frames stamped an hour ahead: received, but no tick could take one, so still not ready
        camera_ahead.append(True)
        deadline = time.monotonic() + 60  # until the camera process (starting on a busy machine) has some
        while "stamped after" not in (ahead := d.call(Trigger, "recap_bridge/start_episode", Trigger.Request())).message:
            assert not ahead.success and time.monotonic() < deadline, ahead.message
            d.spin(0.5)
        assert not ahead.success and "stamped after the bridge's clock" in ahead.message, ahead.message
        assert d.stats[-1]["cameras_ready"] is False
        camera_on.append(True)
        d.wait_ready()
        assert d.call(Trigger, "recap_bridge/start_episode", Trigger.Request()).success
        d.spin(1.5)
        episode = d.call(SetBool, "recap_bridge/end_episode", SetBool.Request(data=True)).message
        d.spin(1.2)
    finally:
        d.close()
        bridge.terminate()
        bridge.wait(10)
    ep = EpisodeStore(store_root).open(episode)
    assert len(ep) > 20 and ep.cameras == ["wrist"]
    rec = ep.image("wrist", len(ep) // 2).astype(int)
    assert np.abs(rec - frame).mean() < 6  # the frame as published (JPEG twice)
    assert (ep.action_source == ActionSource.HOLD).all() and np.allclose(ep.action, [0.1, -0.2, 0.3])
    assert got and got[-1].joint_names == ["j1", "j2", "j3"]  # joint_names' order (no command_joint_names)
    assert np.allclose(got[-1].points[0].positions, [0.1, -0.2, 0.3])
    assert d.stats[-1]["refused"]["image"] > 20
