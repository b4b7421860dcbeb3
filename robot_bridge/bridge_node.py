"""The bridge: one ROS 2 node per robot that runs the deployed policy, lets a human take over at any
moment, and records every control tick through the crash-safe episode writer.

Topics (standard types, so it drops into a ros2_control stack):
  in   joint_state_topic     sensor_msgs/JointState        (positions by joint_names -> the state vector)
  in   camera topics         sensor_msgs/Image (rgb8) or sensor_msgs/CompressedImage (jpeg), received,
                             decoded and recorded by the bridge's camera process (robot_bridge/cameras.py,
                             the default), or (camera_process false) in the bridge's own process
  in   teleop_command_topic  std_msgs/Float64MultiArray    (the human's action while engaged), or a
                             leader arm's sensor_msgs/JointState (by leader_joint_names)
  in   engage_topic          std_msgs/Bool                 (pedal / button)
  in   mistake_topic         std_msgs/Header               (optional: when the policy's mistake a takeover answers
                             was, as header.stamp on the ticks' clock, frame_id why; kept with the episode)
  out  command_topic         std_msgs/Float64MultiArray or trajectory_msgs/JointTrajectory
                             (in the controller's joint order, command_joint_names)
  out  /diagnostics          diagnostic_msgs/DiagnosticArray (1 Hz; levels and thresholds: robot_bridge/diagnostics.py)
  out  ~/stats               std_msgs/String (JSON counters and state_age_ms, 1 Hz, for scripts)
The policy (inference_url) is asked for chunks ahead of time (policy_client.py); a policy reading the
last n control ticks (n_obs_steps, learnt from the server) gets the episode's n - 1 ticks before the
current one with each request (TickHistory), and a request it refuses (422) is counted in ~/stats.
Parameters are declared with descriptors (`ros2 param describe`); tokens are read from the files named
by inference_token_file / api_token_file or from the environment, never from parameters.
Services: ~/start_episode (std_srvs/Trigger; task and instruction from parameters; refused while the arm
          talks and a camera has delivered no frame, ~/stats cameras_ready),
          ~/start_demonstration (std_srvs/Trigger: the human drives, refused until a teleoperator's
          command and pedal topics have a publisher; engaged ticks are recorded as
          demonstration, never as correction, and no policy runs),
          ~/end_episode (std_srvs/SetBool: data = success),
          ~/abort_episode (std_srvs/Trigger: stop without an outcome, e.g. the arm stopped answering;
          the flushed ticks are kept as an `incomplete` episode, which training never selects),
          ~/label_last_episode (std_srvs/SetBool: relabel the last committed episode).
Names are relative: in a robot's namespace (`--robot ID`, or `-r __ns:=/<robot>`) the services are
`/<robot>/recap_bridge/start_episode`, ... and the topics `/<robot>/joint_states`, ...

    python -m robot_bridge.bridge_node --robot cell-a-arm-1 --ros-args --params-file deploy/ros2/bridge_ros2_control.yaml
"""

from __future__ import annotations

import gc
import json
import logging
import os
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rclpy
from rclpy.node import Node
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, Header, String
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from data.logs import setup_logging
from data.schema import ActionSource, CameraSpec, EpisodeFeatures, Outcome, Tick
from data.store import DegenerateEpisodeError, EpisodeStore
from robot_bridge.arbitration import DEADLINE_S, REFILL_BELOW, JointMap, SampleBuffer, TickHistory, build_arbiter
from robot_bridge.cameras import CameraProcessError
from robot_bridge.policy_client import PolicyClient
from robot_bridge.registration import PendingRegistrations
from robot_bridge.ros import ConfigError, spin_node
from robot_bridge.shipper import BacklogProbe, disk_refusal, disk_status

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Param:
    default: object
    description: str
    read_only: bool = True  # read once at start: `ros2 param set` cannot change it under a running loop
    range: tuple | None = None  # (low, high), inclusive


PARAMS = {
    "robot_id": Param("robot-0", "this robot's id (the API and the episode store know it by it)"),
    "control_rate_hz": Param(30.0, "control ticks per second", range=(1.0, 1000.0)),
    "state_dim": Param(4, "dimensions of the state vector (the number of joint_names when they are given)", range=(1, 512)),
    "action_dim": Param(4, "command dimensions", range=(1, 512)),
    "joint_state_topic": Param("joint_states", "sensor_msgs/JointState of the arm (ros2_control's joint_state_broadcaster)"),
    "joint_names": Param([""], "the state's joints in the state vector's order, matched by name in each JointState "
                               "(any order, extra joints ignored, a message missing one refused and counted); "
                               "empty: positions taken in order, exactly state_dim of them"),
    "command_joint_names": Param([""], "the controller's joint order: commands are sent in it (a permutation of "
                                       "joint_names; empty: joint_names' order); the JointTrajectory's joint_names"),
    "camera_names": Param([""], "camera names (empty: none)"),
    "camera_topics": Param([""], "one topic per camera"),
    "camera_height": Param(0, "image height of every camera", range=(0, 8192)),
    "camera_width": Param(0, "image width of every camera", range=(0, 8192)),
    "camera_compressed": Param(False, "CompressedImage (JPEG) instead of Image"),
    "camera_process": Param(True, "receive, decode and record the cameras in a process of their own "
                                  "(robot_bridge/cameras.py): the control process never touches image bytes; "
                                  "off: in the bridge's process, which measured worse (bench/results/bridge.md)"),
    "camera_nice": Param(10, "niceness of the camera process (0-19): on busy cores the control thread, at the "
                             "bridge's own niceness, wakes ahead of recording, which tolerates a backlog", range=(0, 19)),
    "teleop_command_topic": Param("teleop/command", "the human's commands while engaged (see teleop_command_type)"),
    "teleop_command_type": Param("float64_array", "float64_array (std_msgs/Float64MultiArray in action order) or "
                                                  "joint_state (a leader arm's sensor_msgs/JointState, by leader_joint_names)"),
    "leader_joint_names": Param([""], "the leader arm's joints in action order, matched by name "
                                      "(empty: joint_names)"),
    "engage_topic": Param("teleop/engage", "std_msgs/Bool (pedal / button)"),
    "mistake_topic": Param("teleop/mistake", "std_msgs/Header: the stamp of the policy's mistake a takeover answers "
                                             "(a teleoperator station that knows it; recorded with the episode)"),
    "command_topic": Param("command", "where commands go"),
    "command_type": Param("float64_array", "float64_array or joint_trajectory"),
    "action_low": Param([-1.0], "per-dimension lower limit (one value: all)"),
    "action_high": Param([1.0], "per-dimension upper limit (one value: all)"),
    "hold_mode": Param("zero_delta", "zero_delta (velocity/delta commands) or position"),
    "hold_keep": Param([-1], "dimensions that keep their last command while holding (e.g. a gripper)"),
    "inference_url": Param("", "inference server, e.g. http://127.0.0.1:8001 (empty: no policy)"),
    "inference_token_file": Param("", "file holding this robot's inference token (empty: $RECAP_INFERENCE_TOKEN, "
                                      "else $RECAP_ROBOT_TOKEN); never a parameter: anyone on the ROS domain reads those"),
    "api_url": Param("", "control-plane API for episode registration (empty: none)"),
    "api_token_file": Param("", "file holding the token for episode registration (empty: $RECAP_API_TOKEN, "
                                "else the inference token's source)"),
    "store_root": Param("recap_home/store", "episode store"),
    "deadline_ms": Param(DEADLINE_S * 1e3, "no fresh policy action this long after the queue ran dry: flagged late",
                         range=(1.0, 60_000.0)),
    "refill_below": Param(REFILL_BELOW, "request the next chunk when fewer actions than this are queued", range=(1, 10_000)),
    "execute": Param(0, "actions executed per chunk (0: the whole chunk)", range=(0, 10_000)),
    "task": Param("task", "task id of the next episode (may change between episodes)", read_only=False),
    "instruction": Param("", "instruction text of the next episode, sent to the policy (may change between episodes)",
                         read_only=False),
    "fsync": Param(True, "fsync every flush (off only for tests)"),
    "disk_reserve_mb": Param(1024.0, "an episode does not start with less free disk than this under store_root (MB)",
                             read_only=False, range=(0.0, 1e12)),
    "realtime_priority": Param(0, "SCHED_FIFO priority of the control thread (1-99, as ros2_control uses on "
                                  "PREEMPT_RT kernels; 0: normal scheduling); without the privilege it runs normally "
                                  "and says so", range=(0, 99)),
}
SECRET_PARAMS = {"inference_token": ("inference_token_file", "RECAP_INFERENCE_TOKEN"),
                 "api_token": ("api_token_file", "RECAP_API_TOKEN")}


def _descriptor(name: str, spec: Param):
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType

    d = spec.default
    kind = (ParameterType.PARAMETER_BOOL if isinstance(d, bool) else
            ParameterType.PARAMETER_INTEGER if isinstance(d, int) else
            ParameterType.PARAMETER_DOUBLE if isinstance(d, float) else
            ParameterType.PARAMETER_STRING if isinstance(d, str) else
            ParameterType.PARAMETER_BOOL_ARRAY if isinstance(d[0], bool) else
            ParameterType.PARAMETER_INTEGER_ARRAY if isinstance(d[0], int) else
            ParameterType.PARAMETER_DOUBLE_ARRAY if isinstance(d[0], float) else
            ParameterType.PARAMETER_STRING_ARRAY)
    desc = ParameterDescriptor(name=name, type=kind, description=spec.description, read_only=spec.read_only)
    if spec.range is not None:
        lo, hi = spec.range
        if kind == ParameterType.PARAMETER_DOUBLE:
            desc.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
        else:
            desc.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
    return desc


def read_secret(path: str, env: tuple[str, ...], what: str) -> str:
    """A token from a file (first line, stripped) or else the first set environment variable; ''
    when none. A file others may read is used, with a warning (it should be 0600)."""
    if path:
        f = Path(path)
        try:
            text = f.read_text().strip()
        except OSError as e:
            raise ConfigError(f"{what}: cannot read {path} ({e.strerror})") from None
        if not text:
            raise ConfigError(f"{what}: {path} is empty")
        if f.stat().st_mode & 0o077:
            log.warning("%s: %s is readable by other users (chmod 600 it)", what, path)
        return text.splitlines()[0].strip()
    return next((os.environ[v] for v in env if os.environ.get(v)), "")


LATENESS_KEPT = 3000  # a minute at 50 Hz; a day of ticks kept would be ~140 MB


@dataclass
class Counters:
    ticks: int = 0
    no_state_ticks: int = 0
    stale_samples: int = 0
    late_ticks: int = 0
    hold_ticks: int = 0
    correction_ticks: int = 0
    demonstration_ticks: int = 0
    refused: dict = field(default_factory=lambda: {"joint_state": 0, "image": 0, "teleop": 0})
    dropped_ticks: int = 0  # control slots skipped because the loop fell a period or more behind
    joint_states: int = 0  # received (valid or not)
    # joint states refused for lacking a configured joint: the arm's, the leader arm's
    missing_joints: dict = field(default_factory=lambda: {"joint_state": 0, "leader": 0})
    last_refusal: str = ""
    # the last LATENESS_KEPT ticks' lateness (~/stats' percentiles, diagnostics' window) and how many there were
    lateness_ms: deque = field(default_factory=lambda: deque(maxlen=LATENESS_KEPT))
    lateness_n: int = 0
    camera_aborted_episodes: int = 0  # episodes the camera process could not finish (aborted, never committed)
    unrecorded_ticks: int = 0  # ticks run, not recorded: the camera process too far behind, or a camera without a frame


class BridgeNode(Node):
    def __init__(self, namespace: str | None = None, **overrides):
        super().__init__("recap_bridge", namespace=namespace)
        given = set(getattr(self, "_parameter_overrides", {})) | set(overrides)  # params file, -p, caller
        for secret, (file_param, env) in SECRET_PARAMS.items():
            if secret in given:
                raise ConfigError(f"{secret} is not accepted as a ROS parameter (anyone on the ROS domain can read "
                                  f"parameters): put the token in a file readable only by the bridge's user and give "
                                  f"its path as {file_param}, or set {env}")
        for name, spec in PARAMS.items():
            try:
                self.declare_parameter(name, overrides.get(name, spec.default), _descriptor(name, spec))
            except Exception as e:  # wrong type or out of range in the params file: say which, and why
                raise ConfigError(f"parameter {name}: {str(e).splitlines()[0]}") from None
        p = {n: self.get_parameter(n).value for n in PARAMS}
        self.p = p
        self.robot_id = p["robot_id"]
        self._check_namespace()
        self.period_ns = int(1e9 / p["control_rate_hz"])
        names = [n for n in p["joint_names"] if n]
        if names and "state_dim" not in given:
            p["state_dim"] = len(names)
        self.state_dim, self.action_dim = int(p["state_dim"]), int(p["action_dim"])
        for choice, allowed in (("command_type", ("float64_array", "joint_trajectory")),
                                ("teleop_command_type", ("float64_array", "joint_state")),
                                ("hold_mode", ("zero_delta", "position"))):
            if p[choice] not in allowed:
                raise ConfigError(f"parameter {choice}: {p[choice]!r} is not one of {list(allowed)}")
        try:
            self.joints = JointMap(names, self.state_dim)
            # commands go out in the controller's order; actions are in joint_names' order
            self.command_order = self.joints.order(p["command_joint_names"]) if names else None
            if self.command_order is not None and self.action_dim != self.state_dim:
                raise ValueError("command_joint_names reorders joint-space actions: action_dim must be the "
                                 "number of joint_names")
            leader = [n for n in p["leader_joint_names"] if n] or (names if len(names) == self.action_dim else [])
            self.leader = JointMap(leader, self.action_dim)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if p["teleop_command_type"] == "joint_state" and not self.leader.names:
            raise ConfigError("teleop_command_type joint_state needs leader_joint_names (or joint_names)")
        self.command_joint_names = [n for n in p["command_joint_names"] if n] or names
        if p["command_type"] == "joint_trajectory" and len(self.command_joint_names) != self.action_dim:
            raise ConfigError(f"joint_trajectory commands need {self.action_dim} joint names "
                              f"(command_joint_names or joint_names), got {self.command_joint_names}")
        inference_token = read_secret(p["inference_token_file"], ("RECAP_INFERENCE_TOKEN", "RECAP_ROBOT_TOKEN"),
                                      "inference token")
        api_token = read_secret(p["api_token_file"], ("RECAP_API_TOKEN",), "API token") or inference_token
        self.cameras = {n: t for n, t in zip(p["camera_names"], p["camera_topics"]) if n}
        self.cam_shape = (int(p["camera_height"]), int(p["camera_width"]), 3)
        try:
            self.arbiter = build_arbiter(self.action_dim, period_s=self.period_ns / 1e9, low=p["action_low"],
                                         high=p["action_high"], deadline_s=p["deadline_ms"] / 1e3,
                                         refill_below=int(p["refill_below"]), execute=int(p["execute"]),
                                         hold_mode=p["hold_mode"], hold_keep=tuple(p["hold_keep"]))
        except ValueError as e:  # limits and holds every command passes through: one line, before anything runs
            raise ConfigError(f"parameter {e}") from None
        self.state_buf = SampleBuffer()
        self.image_bufs = {c: SampleBuffer() for c in self.cameras}  # cameras received in this process
        self.image_frames = {c: 0 for c in self.cameras}
        self.human = SampleBuffer()
        self.engaged = False
        self._moved = False  # the last command sent was not a hold: a human's or the policy's (see _left_alone)
        self.counters = Counters()
        self.store = EpisodeStore(p["store_root"])
        self.registrations = PendingRegistrations(Path(p["store_root"]).parent / "pending_registrations" / self.robot_id,
                                                  p["api_url"] or None, api_token or None)
        self.ship_backlog = BacklogProbe(self.store.root)  # what the shipper (`recap bridge ship`) has yet to send
        self.policy = (PolicyClient(p["inference_url"], inference_token, self.arbiter.offer_chunk,
                                    action_dim=self.action_dim) if p["inference_url"] else None)
        self.writer = None
        self.recording = 0  # the camera process's number of the episode being recorded (0: none, or no camera process)
        # recorded ticks whose frames the camera process may have yet to make durable (~1 s): beyond, a
        # tick runs unrecorded rather than memory growing or the loop waiting on the disk
        self.max_backlog = max(50, int(p["control_rate_hz"]))
        self.demonstrating = False
        self.episode_task = ""
        self.tick_index = 0  # across episodes: a chunk asked for in one episode never lands in the next
        # the episode's ticks a policy reading several gets with the current one (control thread only)
        self.history, self._history_of = TickHistory(), None
        self._episode_first_tick = 0  # tick_index at the episode's first tick (a chunk critic's time input)
        self._ring_frames: dict[int, tuple[int, np.ndarray]] = {}  # camera -> (stamp, frame) last copied
        self._last_tick_ns = -1
        self._last_state_mono: float | None = None  # when the last valid joint state arrived (wall clock)
        self._lock = threading.Lock()

        self.create_subscription(JointState, p["joint_state_topic"], self._on_joint_state, 10)
        # cameras are received, decoded and recorded in their own process (robot_bridge/cameras.py): the
        # control loop reads which frame each tick takes from shared memory and tells the camera process
        self.camera_proc = None
        if self.cameras and p["camera_process"]:
            from robot_bridge.cameras import CameraProcess

            self.camera_proc = CameraProcess([self.resolve_topic_name(t) for t in self.cameras.values()],
                                             self.cam_shape, bool(p["camera_compressed"]), self.get_namespace(),
                                             frames_to_ring=self.policy is not None, nice=int(p["camera_nice"]))
        elif self.cameras:
            for cam, topic in self.cameras.items():
                if p["camera_compressed"]:
                    self.create_subscription(CompressedImage, topic, lambda m, c=cam: self._on_compressed(c, m), 4)
                else:
                    self.create_subscription(Image, topic, lambda m, c=cam: self._on_image(c, m), 4)
        if p["teleop_command_type"] == "joint_state":  # a leader arm: its joints by name
            self.create_subscription(JointState, p["teleop_command_topic"], self._on_leader, 10)
        else:
            self.create_subscription(Float64MultiArray, p["teleop_command_topic"], self._on_teleop, 10)
        self.create_subscription(Bool, p["engage_topic"], self._on_engage, 10)
        self.create_subscription(Header, p["mistake_topic"], self._on_mistake, 10)
        if p["command_type"] == "joint_trajectory":
            self.cmd_pub = self.create_publisher(JointTrajectory, p["command_topic"], 10)
        else:
            self.cmd_pub = self.create_publisher(Float64MultiArray, p["command_topic"], 10)
        self.stats_pub = self.create_publisher(String, "~/stats", 10)
        # absolute, as diagnostic_updater publishes: the aggregator and rqt_robot_monitor listen there
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_mark: dict = {}
        for srv_type, name, handler in ((Trigger, "start_episode", self._start_episode),
                                        (Trigger, "start_demonstration", self._start_demonstration),
                                        (SetBool, "end_episode", self._end_episode),
                                        (Trigger, "abort_episode", self._abort_episode),
                                        (SetBool, "label_last_episode", self._label_last)):
            self.create_service(srv_type, f"~/{name}", self._answered(name, handler))
        self.last_committed: str | None = None
        self.next_tick_ns = time.monotonic_ns() + self.period_ns
        self._wake = threading.Event()
        self.control_scheduling = "normal"  # the control thread's; reported in ~/stats
        self.sim_time = bool(self.get_parameter("use_sim_time").value)
        self._control = threading.Thread(target=self._control_loop, name="control", daemon=True)
        self._running = not self.sim_time  # on simulated time there is no wall-clock loop
        if self._running:
            self._control.start()
        self.create_timer(1.0, self._kept_going("stats", self._publish_stats))
        # everything built so far (modules, this node, buffers) lives as long as the process: keep the
        # garbage collector from scanning it again and again while it holds the interpreter (profiled
        # at 50 Hz with 3 cameras: a quarter of the executor thread's time was spent in collections)
        gc.freeze()
        self.get_logger().info(f"bridge for {self.robot_id}: {json.dumps(p)}")

    def _check_namespace(self) -> None:
        from robot_bridge.ros import RobotNameError, robot_namespace

        ns = self.get_namespace()
        try:
            want = robot_namespace(self.robot_id)
        except RobotNameError as e:
            want = str(e)
        if ns != "/" and ns != want:  # another robot's cell could answer for this one
            self.get_logger().warning(f"namespace {ns} is not robot {self.robot_id}'s ({want})")

    # -- inputs (validated; a bad message is refused and counted, never reaches the arm) ----------

    @staticmethod
    def _stamp_ns(header) -> int:
        return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec

    def _refuse_joints(self, counter: str, source: str, why: str) -> None:
        """A JointState the joint map refused (`why`: JointMap's reason), counted and kept as the last refusal."""
        self.counters.refused[counter] += 1
        if why.startswith("missing"):
            self.counters.missing_joints[source] += 1
        self.counters.last_refusal = f"{source}: {why}"

    def _on_joint_state(self, m: JointState) -> None:
        self.counters.joint_states += 1
        pos = self.joints(m.name, m.position)
        if isinstance(pos, str):
            self._refuse_joints("joint_state", "joint_state", pos)
            return
        stamp = self._stamp_ns(m.header) or self.get_clock().now().nanoseconds
        self.state_buf.add(stamp, pos.astype(np.float32))
        self._last_state_mono = time.monotonic()
        if self.sim_time:  # on simulated time the state drives the ticks (lockstep with a fast simulator)
            if stamp <= self._last_tick_ns:
                return  # the same instant sent again (the simulator waits for us): one tick per instant
            try:
                if self._tick(0, tick_ns=stamp):
                    self._last_tick_ns = stamp
            except Exception as e:
                self.get_logger().error(f"tick failed: {e!r}")

    def _on_image(self, cam: str, m: Image) -> None:
        if m.encoding != "rgb8" or (m.height, m.width, 3) != self.cam_shape or len(m.data) != m.height * m.width * 3:
            self.counters.refused["image"] += 1
            return
        img = np.frombuffer(bytes(m.data), np.uint8).reshape(self.cam_shape)
        self.image_bufs[cam].add(self._stamp_ns(m.header), img)
        self.image_frames[cam] += 1

    def _on_compressed(self, cam: str, m: CompressedImage) -> None:
        import simplejpeg

        try:
            img = simplejpeg.decode_jpeg(bytes(m.data), colorspace="RGB")
        except Exception:
            img = None
        if img is None or img.shape != self.cam_shape:
            self.counters.refused["image"] += 1
            return
        self.image_bufs[cam].add(self._stamp_ns(m.header), img)
        self.image_frames[cam] += 1

    def _frames_received(self, i: int, cam: str) -> int:
        return self.camera_proc.ring.written(i) if self.camera_proc else self.image_frames[cam]

    def _cameras_refusal(self) -> str | None:
        """Why an episode cannot start for want of frames: the arm talks but a camera has delivered no
        frame, and a tick records and asks the policy only with every camera's frame, so the episode would
        run unrecorded, the arm holding, until it does. None when every camera has (or the arm is silent
        too: the episode then waits for both, as it waits for the arm without cameras)."""
        silent = self._cameras_without_frame()
        if not silent or self._last_state_mono is None:  # nothing heard yet (a simulated arm before its
            return None  # first reset): the episode waits for the arm, as without cameras
        ahead = [cam for i, cam in enumerate(self.cameras) if cam in silent and self._frames_received(i, cam)]
        why = (f"; {', '.join(ahead)} sent frames stamped after the bridge's clock (a camera clock ahead?)"
               if ahead else "")
        return (f"cameras not ready: no frame yet from {', '.join(silent)}{why} "
                f"(~/stats says cameras_ready once every camera has delivered one)")

    def _teleop_refusal(self) -> str | None:
        """Why a demonstration cannot start: this node has not discovered a publisher of the
        teleoperator's commands or pedal (just started, or no teleoperator), so nobody could drive and the
        episode would record holds only. None when both are heard."""
        topics = [self.p["teleop_command_topic"], self.p["engage_topic"]]
        unheard = [t for t in topics if not self.count_publishers(t)]
        return f"not ready: no teleoperator heard yet on {', '.join(unheard)}" if unheard else None

    def _cameras_without_frame(self) -> list[str]:
        """The cameras with no frame a tick taken now could use (one stamped at or before the clock)."""
        now = self.get_clock().now().nanoseconds
        if self.camera_proc:
            return [cam for i, cam in enumerate(self.cameras) if self.camera_proc.ring.newest(i, now) is None]
        return [cam for cam in self.cameras if self.image_bufs[cam].at(now) is None]

    def _on_teleop(self, m: Float64MultiArray) -> None:
        a = np.asarray(m.data, np.float64)
        if a.shape != (self.action_dim,) or not np.all(np.isfinite(a)):
            self.counters.refused["teleop"] += 1
            return
        self.human.add(self.get_clock().now().nanoseconds, a.astype(np.float32))

    def _on_leader(self, m: JointState) -> None:
        a = self.leader(m.name, m.position)
        if isinstance(a, str):
            self._refuse_joints("teleop", "leader", a)
            return
        self.human.add(self.get_clock().now().nanoseconds, a.astype(np.float32))

    def _on_engage(self, m: Bool) -> None:
        engaged = bool(m.data)
        if engaged and not self.engaged:
            self._wake.set()  # the human takes over now, not at the next scheduled tick
        self.engaged = engaged

    def _on_mistake(self, m: Header) -> None:
        """The teleoperator's station says when the policy went wrong: noted with the running episode
        (data/effort.py: mistake to takeover); between episodes or in a demonstration, ignored."""
        stamp = self._stamp_ns(m)
        with self._lock:
            w = None if self.demonstrating else self.writer
        if w is None or stamp <= 0:
            return
        try:
            w.note_event("mistake", stamp, why=m.frame_id[:64])
        except Exception as e:  # a writer that just closed (the episode ended meanwhile)
            self.get_logger().warning(f"mistake at {stamp} not recorded: {e}")

    # -- episodes ----------------------------------------------------------------------------------

    def _answered(self, name: str, handler):
        """`handler` as a service: an error it did not expect (a store failing under it: a full or
        read-only disk, a directory replaced) is answered as a refusal naming it, and logged, instead of
        ending the bridge, and the arm's commands, with the executor that ran it."""
        def answer(req, resp):
            try:
                return handler(req, resp)
            except Exception as e:  # noqa: BLE001 - the control loop goes on; the caller is told
                resp.success, resp.message = False, f"{name} failed: {type(e).__name__}: {e}"
                self.get_logger().error(f"{resp.message}\n{traceback.format_exc()}")
                return resp
        return answer

    def _kept_going(self, name: str, fn):
        """`fn` as a timer callback whose error is logged (once until it changes) instead of ending the
        bridge: e.g. ~/stats while the store's directory is gone."""
        last: list[str] = [""]

        def run():
            try:
                fn()
                last[0] = ""
            except Exception as e:  # noqa: BLE001
                why = f"{name} failed: {type(e).__name__}: {e}"
                if why != last[0]:
                    self.get_logger().error(why)
                last[0] = why
        return run

    def _start_demonstration(self, req, resp):
        return self._start_episode(req, resp, demonstration=True)

    def _start_episode(self, _req, resp, demonstration: bool = False):
        # services run one at a time (the executor's thread); the lock is the control loop's, held only
        # to hand the new writer over: creating the episode (files, fsyncs) never holds a tick up
        with self._lock:
            running = self.writer.episode_id if self.writer is not None else None
        if running:
            resp.success, resp.message = False, f"episode {running} is running"
            return resp
        refusal = (self._cameras_refusal() or (self._teleop_refusal() if demonstration else None)
                   or disk_refusal(self.store.root, float(self.get_parameter("disk_reserve_mb").value)))
        if refusal:  # refused at the start rather than failing mid-episode on a full disk or without frames
            resp.success, resp.message = False, refusal
            self.get_logger().warning(refusal)
            return resp
        self.episode_task = self.get_parameter("task").value
        feats = EpisodeFeatures(self.state_dim, self.action_dim,
                                {c: CameraSpec(*self.cam_shape[:2]) for c in self.cameras}, proposed_chunk=1)
        cam = self.camera_proc
        serial = cam.next_serial() if cam else 0
        writer = self.store.new_episode(robot_id=self.robot_id, task_id=self.episode_task, features=feats,
                                        fps=1e9 / self.period_ns, instruction=self.get_parameter("instruction").value,
                                        fsync=bool(self.p["fsync"]),
                                        frames_elsewhere=(lambda: cam.ring.durable(serial)) if cam else None)
        if cam:  # the camera process records the frames into the arrays the writer just created
            try:
                cam.start_episode(serial, writer.path, list(self.cameras), writer.flush_ticks, bool(self.p["fsync"]),
                                  self.max_backlog)
            except CameraProcessError as e:
                writer.discard()
                resp.success, resp.message = False, f"cameras not ready: {e}"
                self.get_logger().error(resp.message)
                return resp
        with self._lock:
            self.writer, self.recording = writer, serial
            self.demonstrating = demonstration
            self.arbiter.reset(self.tick_index)
        resp.success, resp.message = True, writer.episode_id
        kind = "demonstration" if demonstration else "episode"
        self.get_logger().info(f"{kind} {resp.message} started ({self.episode_task})")
        return resp

    def _end_episode(self, req, resp):
        with self._lock:
            w, self.writer, serial = self.writer, None, self.recording
        if w is None:
            resp.success, resp.message = False, "no episode is running"
            return resp
        frames = None
        if self.camera_proc:  # every frame durable first (the control loop runs on meanwhile)
            try:
                frames = self.camera_proc.end_episode(serial, w.num_ticks)
            except CameraProcessError as e:
                resp.success, resp.message = False, self._abort_for_cameras(w, serial, str(e))
                return resp
        try:
            info = w.commit(Outcome.SUCCESS if req.data else Outcome.FAILURE, f"bridge:{self.robot_id}",
                            frames_written=frames)
        except DegenerateEpisodeError as e:  # e.g. no joint state arrived: nothing worth keeping
            resp.success, resp.message = False, str(e)
            self.get_logger().warning(str(e))
            return resp
        self.registrations.add(info.episode_id)
        self.last_committed = info.episode_id
        resp.success, resp.message = True, info.episode_id
        self.get_logger().info(f"episode {info.episode_id} committed: {info.num_ticks} ticks, "
                               f"{'success' if req.data else 'failure'}")
        return resp

    def _abort_episode(self, _req, resp):
        """End the running episode without an outcome: the writer stops, what it flushed is committed as
        `incomplete` (as fsck would after a crash) and never registered for training."""
        with self._lock:
            w, self.writer, serial = self.writer, None, self.recording
        if w is None:
            resp.success, resp.message = False, "no episode is running"
            return resp
        if self.camera_proc:
            self.camera_proc.abort_episode(serial)  # it stops writing the frames before the recovery
        kept = self._recover(w)
        resp.success, resp.message = True, w.episode_id
        self.get_logger().info(f"episode {w.episode_id} aborted: {kept} ticks kept as incomplete")
        return resp

    def _recover(self, w) -> int:
        """Stop `w` and keep its flushed ticks (with every frame) as an `incomplete` episode; how many."""
        from data.fsck import recover_episode

        w.abandon()
        try:
            return recover_episode(w.path)
        except ValueError as e:  # nothing flushed yet: fsck --repair moves the directory aside
            self.get_logger().warning(f"episode {w.episode_id} aborted before any tick was flushed ({e})")
            return 0

    def _abort_for_cameras(self, w, serial: int, why: str) -> str:
        """The camera process cannot finish the episode's frames: the episode is aborted (its ticks with
        every frame on disk kept as `incomplete`), never committed. Returns what happened, in words."""
        self.counters.camera_aborted_episodes += 1
        if self.camera_proc:
            self.camera_proc.abort_episode(serial)
        kept = self._recover(w)
        msg = (f"episode {w.episode_id} aborted, not committed: the camera process could not record it ({why}); "
               f"{kept} ticks with all their frames kept as incomplete")
        self.get_logger().error(msg)
        return msg

    def _camera_failed(self, why: str) -> None:
        """The running episode's frames cannot be recorded: the episode ends now (aborted off the
        control loop's thread); the loop goes on, leaving the arm alone as between episodes."""
        with self._lock:
            w, serial = self.writer, self.recording
            if w is None or not serial:
                return
            self.writer, self.recording = None, 0
        threading.Thread(target=self._abort_for_cameras, args=(w, serial, why), name="camera-abort", daemon=True).start()

    def _label_last(self, req, resp):
        """Relabel the last committed episode (an operator's later judgement); the label is a file in
        the store, and the episode is registered again so the catalog follows."""
        if self.last_committed is None:
            resp.success, resp.message = False, "no episode committed since the bridge started"
            return resp
        self.store.label(self.last_committed, Outcome.SUCCESS if req.data else Outcome.FAILURE,
                         f"bridge:{self.robot_id}")
        self.registrations.add(self.last_committed)
        resp.success, resp.message = True, self.last_committed
        return resp

    # -- the control loop (its own thread: never waits on the network or the executor) ------------

    def _make_realtime(self) -> None:
        """Control thread: real-time scheduling when asked for and allowed."""
        prio = int(self.p["realtime_priority"])
        if prio <= 0:
            return
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(prio))  # 0: this thread
            self.control_scheduling = f"SCHED_FIFO {prio}"
            self.get_logger().info(f"control thread runs SCHED_FIFO priority {prio}")
        except (PermissionError, OSError) as e:
            self.get_logger().warning(f"control thread keeps normal scheduling ({e.strerror}); grant CAP_SYS_NICE "
                                      "or an rtprio limit for steadier ticks")

    def _control_loop(self) -> None:
        self._make_realtime()
        while self._running and rclpy.ok():
            now = time.monotonic_ns()
            if now < self.next_tick_ns:
                if self._wake.wait((self.next_tick_ns - now) / 1e9):  # engaged: tick now, re-phase
                    self._wake.clear()
                    self.next_tick_ns = time.monotonic_ns()
                continue
            lateness = now - self.next_tick_ns
            self.next_tick_ns += self.period_ns
            if lateness > self.period_ns:  # fell behind: skip to the next slot rather than burst
                self.counters.dropped_ticks += lateness // self.period_ns
                self.next_tick_ns = now + self.period_ns
            try:
                self._tick(lateness)
            except Exception as e:  # a tick must never kill the loop; the error is logged and counted
                if not rclpy.ok():
                    return  # shutting down
                self.get_logger().error(f"tick failed: {e!r}")

    def _tick(self, lateness_ns: int, tick_ns: int | None = None) -> bool:
        """One control tick; True when it commanded the arm."""
        c = self.counters
        t_ns = tick_ns if tick_ns is not None else self.get_clock().now().nanoseconds
        s = self.state_buf.at(t_ns)
        if s is None:
            c.no_state_ticks += 1
            return False
        if t_ns - s.stamp_ns > 2 * self.period_ns:
            c.stale_samples += 1
        images, stamps = {}, []  # the tick's frames: received here, or only their stamps (camera process)
        for i, cam in enumerate(self.cameras):
            if self.camera_proc:
                stamp = self.camera_proc.ring.newest(i, t_ns)
            else:
                im = self.image_bufs[cam].at(t_ns)
                stamp = None if im is None else im.stamp_ns
            if stamp is None:
                c.no_state_ticks += 1
                return self._human_only(s.value, t_ns, lateness_ns)
            if t_ns - stamp > 2 * self.period_ns:
                c.stale_samples += 1
            stamps.append(stamp)
            if not self.camera_proc:
                images[cam] = im.value
        with self._lock:
            writer, tick = self.writer, self.tick_index
            demonstrating = writer is not None and self.demonstrating  # a demonstration is running
            if writer is not None:
                self.tick_index += 1
        if writer is not self._history_of:  # another episode (or none): its history starts empty
            self.history.reset()
            self._history_of, self._episode_first_tick = writer, tick
        # the ticks the served policy reads before this one: kept through the episode's every tick
        keep = writer is not None and self.policy is not None and not demonstrating
        self.history.resize(self.policy.n_obs_steps if keep else 1)
        frames = None  # the tick's frames as a policy request sends them
        human = self.human.at(t_ns)
        engaged = self.engaged and human is not None
        if writer is not None and self.policy is not None and not engaged and not demonstrating \
                and self.arbiter.needs_chunk() and not self.policy.busy:
            frames = self._policy_frames(stamps) if self.camera_proc else images
            if frames is not None:
                self.policy.request(tick, s.value, frames, self.get_parameter("instruction").value,
                                    self.history.past(), episode_tick=tick - self._episode_first_tick)
            if self.sim_time:  # simulated time stands still while the policy thinks (wall-clock bound)
                deadline = time.monotonic() + 2.0
                while self.policy.busy and not self.arbiter.queue.actions and time.monotonic() < deadline:
                    time.sleep(0.001)
        if writer is None and not engaged:
            return self._left_alone(s.value)  # between episodes the arm is left alone (only a human may drive it)
        d = self.arbiter.decide(tick, s.value, human.value if human else None, engaged)
        self._command(d, demonstrating, lateness_ns)
        if keep and self.history.n_obs_steps > 1:  # this tick becomes history for the next requests
            if frames is None:
                frames = self._policy_frames(stamps) if self.camera_proc else images
            if frames is not None:
                self.history.observe(s.value, frames)
        if writer is not None:
            self._record(writer, Tick(t_ns, s.value, d.action, d.source, images=images,
                                      proposed=None if d.proposed is None else d.action,
                                      policy_version=d.policy_version), stamps)
        return True

    def _command(self, d, demonstrating: bool, lateness_ns: int) -> None:
        """The arbiter's decision `d` to the arm, counted by its source (a human's action in a
        demonstration is the demonstration's)."""
        if demonstrating and d.source == ActionSource.CORRECTION:
            d.source = ActionSource.DEMONSTRATION
        self._publish(d.action)
        self._moved = d.source != ActionSource.HOLD
        c = self.counters
        c.ticks += 1
        c.lateness_ms.append(lateness_ns / 1e6)
        c.lateness_n += 1
        c.late_ticks += d.late
        c.hold_ticks += d.source == ActionSource.HOLD
        c.correction_ticks += d.source == ActionSource.CORRECTION
        c.demonstration_ticks += d.source == ActionSource.DEMONSTRATION

    def _human_only(self, state: np.ndarray, t_ns: int, lateness_ns: int) -> bool:
        """A tick without every camera's frame: nothing is recorded (a running episode counts the tick as
        unrecorded) and no policy is asked, but an engaged human still drives the arm through the
        arbiter's checks (a takeover never waits for a camera)."""
        human = self.human.at(t_ns)
        if not (self.engaged and human is not None):
            return self._left_alone(state)
        with self._lock:
            tick, recording = self.tick_index, self.writer is not None
            demonstrating = recording and self.demonstrating
        self._command(self.arbiter.decide(tick, state, human.value, True), demonstrating, lateness_ns)
        self.counters.unrecorded_ticks += recording
        return True

    def _left_alone(self, state: np.ndarray) -> bool:
        """No command this tick; but right after the arm was moved (a human drove it, or the policy did
        until its episode ended), one hold is sent first, so that a controller keeping its last command
        (a delta, a velocity) does not go on applying it."""
        if not self._moved:
            return False
        self._moved = False
        self._publish(self.arbiter.hold(state).action)
        self.counters.ticks += 1
        self.counters.hold_ticks += 1
        return True

    def _record(self, writer, tick: Tick, stamps: list[int]) -> None:
        """Append the tick to the episode, and have the camera process record its frames at the same
        index; an episode ended meanwhile gets nothing more. While the camera process is more than
        max_backlog ticks behind with its frames (a disk or CPU stall), ticks run unrecorded (counted)."""
        with self._lock:
            if self.writer is not writer:
                return
            k = writer.num_ticks
            if self.recording and k - self.camera_proc.ring.durable(self.recording) > self.max_backlog:
                self.counters.unrecorded_ticks += 1
                return
            writer.append(tick)
            if not self.recording:
                return
            try:
                self.camera_proc.tick(self.recording, k, tick.timestamp_ns, stamps)
            except CameraProcessError as e:  # the episode ends (aborted off this thread); the loop goes on
                serial, self.writer, self.recording = self.recording, None, 0
                threading.Thread(target=self._abort_for_cameras, args=(writer, serial, str(e)),
                                 name="camera-abort", daemon=True).start()

    def _policy_frames(self, stamps: list[int]) -> dict[str, np.ndarray] | None:
        """The tick's frames (by the stamps it chose, the ones it records) for a policy request or its
        history, copied out of the camera process's ring (None: no longer there); a frame the last call
        copied is not copied again."""
        out = {}
        ring = self.camera_proc.ring
        for i, (cam, stamp) in enumerate(zip(self.cameras, stamps)):
            last = self._ring_frames.get(i)
            if last is None or last[0] != stamp:
                last = ring.at(i, stamp)
                if last is None:
                    return None
                self._ring_frames[i] = last
            out[cam] = last[1]
        return out

    def _publish(self, action: np.ndarray) -> None:
        if self.command_order is not None:  # the controller's joint order
            action = action[self.command_order]
        if self.p["command_type"] == "joint_trajectory":
            msg = JointTrajectory(joint_names=list(self.command_joint_names))
            msg.points = [JointTrajectoryPoint(positions=[float(x) for x in action])]
        else:
            msg = Float64MultiArray(data=[float(x) for x in action])
        self.cmd_pub.publish(msg)

    def _refused_images(self) -> int:
        if self.camera_proc:
            return sum(self.camera_proc.ring.refused(i) for i in range(len(self.cameras)))
        return self.counters.refused.get("image", 0)

    def _publish_stats(self) -> None:
        c = self.counters
        lat = np.asarray(list(c.lateness_ms)) if c.lateness_ms else np.zeros(1)  # one copy (the control thread appends)
        doc = {"robot": self.robot_id, "ticks": c.ticks, "no_state_ticks": c.no_state_ticks,
               "stale_samples": c.stale_samples, "late_ticks": c.late_ticks, "hold_ticks": c.hold_ticks,
               "correction_ticks": c.correction_ticks,
               "demonstration_ticks": c.demonstration_ticks,
               # every command refused on its way to the arm: inputs, policy chunks, teleoperator commands
               "refused": c.refused | {"image": self._refused_images(), "policy_chunk": self.arbiter.refused_chunks,
                                       "command": self.arbiter.refused_commands,
                                       "policy_answer": self.policy.dropped if self.policy else 0},
               "joint_states": c.joint_states, "missing_joints": c.missing_joints, "last_refusal": c.last_refusal, "dropped_ticks": c.dropped_ticks,
               "lateness_p50_ms": float(np.percentile(lat, 50)), "lateness_p99_ms": float(np.percentile(lat, 99)),
               "episode": self.writer.episode_id if self.writer else None,
               "policy_errors": self.policy.errors if self.policy else 0,
               # requests the server refused (422: it cannot answer them; the arm holds) and why
               "policy_rejected": self.policy.rejected if self.policy else 0,
               "policy_last_rejection": self.policy.last_rejection if self.policy else "",
               "policy_n_obs_steps": self.policy.n_obs_steps if self.policy else None,  # ticks each request carries
               "pending_registrations": len(self.registrations.pending()),
               "control_scheduling": self.control_scheduling,
               **disk_status(self.store.root, float(self.get_parameter("disk_reserve_mb").value)),
               "ship_backlog": self.ship_backlog(),
               # every camera has delivered a frame to the camera process (true without cameras)
               "cameras_ready": not self._cameras_without_frame(),
               # episodes the camera process could not record (aborted, never committed); frames it
               # recorded with a substitute (the chosen one already gone: the newest at or before the tick)
               "camera_aborted_episodes": c.camera_aborted_episodes, "unrecorded_ticks": c.unrecorded_ticks,
               "camera_substituted_frames": self.camera_proc.ring.substituted() if self.camera_proc else 0,
               # is the arm talking to us? (null until its first valid joint state)
               "state_age_ms": (None if self._last_state_mono is None
                                else round((time.monotonic() - self._last_state_mono) * 1e3, 1))}
        self.stats_pub.publish(String(data=json.dumps(doc)))
        self._publish_diagnostics()

    def _publish_diagnostics(self) -> None:
        import shutil

        from robot_bridge.diagnostics import Window, assess

        c, m = self.counters, self._diag_mark
        if self.camera_proc:
            serial = self.recording
            why = self.camera_proc.failure(serial) if serial else None
            gone = self.camera_proc.restart_if_gone()
            if gone:
                self.get_logger().error(f"{gone}: restarted")
            if serial and (why or gone):  # the running episode's frames cannot be finished
                self._camera_failed(why or gone)
        cams = {f"frames_{cam}": self._frames_received(i, cam) for i, cam in enumerate(self.cameras)}
        cams |= {"camera_refused": self._refused_images(),
                 "camera_restarts": self.camera_proc.restarts if self.camera_proc else 0,
                 "camera_aborts": c.camera_aborted_episodes, "unrecorded": c.unrecorded_ticks}
        now = {**cams, "ticks": c.ticks, "lateness": c.lateness_n, "dropped": c.dropped_ticks,
               "stale": c.stale_samples, "refused": c.refused["joint_state"], "received": c.joint_states,
               "late": c.late_ticks, "round_trips": self.policy.round_trip_count if self.policy else 0,
               "policy_errors": self.policy.errors if self.policy else 0,
               "policy_rejected": self.policy.rejected if self.policy else 0}
        d = {k: v - m.get(k, 0) for k, v in now.items()}
        self._diag_mark = now
        try:
            free = shutil.disk_usage(self.store.root).free
        except OSError:
            free = None
        w = Window(period_ms=self.period_ns / 1e6, ticks=d["ticks"], lateness_ms=list(c.lateness_ms)[-min(d["lateness"], LATENESS_KEPT):] if d["lateness"] else [],
                   dropped_ticks=d["dropped"], stale_samples=d["stale"],
                   state_age_ms=None if self._last_state_mono is None else (time.monotonic() - self._last_state_mono) * 1e3,
                   joint_states_refused=d["refused"], joint_states_received=d["received"], last_refusal=c.last_refusal,
                   deadline_holds=d["late"], policy=self.policy is not None, deadline_ms=float(self.p["deadline_ms"]),
                   round_trips_ms=self.policy.round_trips_ms[-d["round_trips"]:] if self.policy and d["round_trips"] else [],
                   policy_errors=d["policy_errors"], policy_rejected=d["policy_rejected"],
                   last_rejection=self.policy.last_rejection if self.policy else "", pending_registrations=len(self.registrations.pending()),
                   disk_free_bytes=free, disk_reserve_bytes=int(float(self.get_parameter("disk_reserve_mb").value) * (1 << 20)),
                   ship_backlog=self.ship_backlog() if self.ship_backlog.shipping() else None,
                   control_scheduling=self.control_scheduling,
                   recording=self.writer.episode_id if self.writer else "",
                   camera_frames={cam: d[f"frames_{cam}"] for cam in self.cameras},
                   camera_refused=d.get("camera_refused", 0), camera_restarts=d.get("camera_restarts", 0),
                   camera_aborts=d.get("camera_aborts", 0), camera_unrecorded=d.get("unrecorded", 0))
        prefix = self.get_fully_qualified_name().lstrip("/")
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [DiagnosticStatus(level=bytes([st.level]), name=f"{prefix}: {st.name}", message=st.message,
                                       hardware_id=self.robot_id,
                                       values=[KeyValue(key=k, value=str(v)) for k, v in st.values.items()])
                      for st in assess(w)]
        self.diag_pub.publish(msg)

    def shutdown(self) -> None:
        self._running = False
        if self._control.is_alive():
            self._control.join(timeout=2)
        if self.policy:
            self.policy.close()
        if self.camera_proc:
            self.camera_proc.close()
        self.registrations.close()


def main(args=None) -> None:
    """`--robot ID` (before `--ros-args`): this robot's id, and its namespace (robot_namespace), so a
    systemd unit per robot needs only the id; without it the namespace comes from `-r __ns:=...`."""
    import argparse
    import sys

    from rclpy.utilities import remove_ros_args

    from robot_bridge.ros import RobotNameError, robot_namespace

    setup_logging()  # httpx quiet: a line per policy request otherwise
    args = sys.argv if args is None else args
    parser = argparse.ArgumentParser(prog="python -m robot_bridge.bridge_node")
    parser.add_argument("--robot", help="robot id; the node runs in its namespace")
    opts = parser.parse_args(remove_ros_args(args)[1:])
    if opts.robot is None:
        spin_node(BridgeNode, args)
        return
    try:
        ns = robot_namespace(opts.robot)
    except RobotNameError as e:
        parser.error(str(e))
    spin_node(lambda: BridgeNode(namespace=ns, robot_id=opts.robot), args)


if __name__ == "__main__":
    main()
