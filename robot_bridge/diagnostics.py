"""The bridge's health as `diagnostic_msgs/DiagnosticArray` levels, without ROS: each second the
bridge hands a `Window` (what happened since the last one) to `assess`, and publishes the statuses
on `/diagnostics`, where rqt_robot_monitor and the diagnostic aggregator see them.

Thresholds (per one-second window; `period` is the control period, 20 ms at 50 Hz):

| status        | value                                   | WARN                 | ERROR                   |
| ------------- | --------------------------------------- | -------------------- | ----------------------- |
| control loop  | tick lateness p99                       | > period / 4         | > period                |
| control loop  | dropped ticks (slots skipped)           | >= 1                 | >= 5                    |
| joint state   | age of the last valid joint state       | > 2 periods          | > 500 ms, or none yet   |
| joint state   | stale samples (state or camera) / ticks | > 10 %               | > 50 %                  |
| joint state   | joint states refused (missing joints..) | >= 1                 | all of the window's     |
| policy        | deadline holds / ticks                  | >= 1 tick            | > 50 %                  |
| policy        | inference round trip p99                | > deadline / 2       | > deadline              |
| policy        | requests the server refused (422)       | >= 1                 | every request of the window |
| cameras       | frames per camera (camera process)      | refused frames, a restart of the camera process, or ticks run unrecorded (its recording behind) | a camera without a frame, or an episode aborted because the camera process could not record it |
| registration  | episodes waiting to be registered       | > 5                  | > 100                   |
| disk          | free space under the episode store      | < 20 GiB             | < 5 GiB, or below `disk_reserve_mb` (episodes are refused) |
| shipping      | episodes not yet confirmed centrally (where a shipper runs) | > 20, or any refused | > 500         |

The worst level of a status's values is its level; its message names what set it."""

from __future__ import annotations

from dataclasses import dataclass, field

OK, WARN, ERROR = 0, 1, 2  # diagnostic_msgs/DiagnosticStatus levels
GIB = 1 << 30
THRESHOLDS = {
    "lateness_p99_periods": (0.25, 1.0),
    "dropped_ticks": (1, 5),
    "state_age_periods": (2.0, None),  # ERROR: STATE_AGE_ERROR_MS
    "stale_share": (0.10, 0.50),
    "deadline_hold_share": (1e-9, 0.50),
    "round_trip_deadlines": (0.5, 1.0),
    "pending_registrations": (5, 100),
    "disk_free_gib": (20.0, 5.0),
    "ship_backlog_episodes": (20, 500),
}
STATE_AGE_ERROR_MS = 500.0


@dataclass
class Window:
    period_ms: float
    ticks: int = 0
    lateness_ms: list = field(default_factory=list)
    dropped_ticks: int = 0
    stale_samples: int = 0
    state_age_ms: float | None = None
    joint_states_refused: int = 0
    joint_states_received: int = 0
    last_refusal: str = ""
    deadline_holds: int = 0
    policy: bool = False
    deadline_ms: float = 100.0
    round_trips_ms: list = field(default_factory=list)
    policy_errors: int = 0
    policy_rejected: int = 0  # requests the server refused (422): it cannot answer this observation
    last_rejection: str = ""  # the server's message for the last of them
    pending_registrations: int = 0
    disk_free_bytes: int | None = None
    disk_reserve_bytes: int = 0  # below it the bridge refuses to start an episode
    ship_backlog: dict | None = None  # robot_bridge.shipper.backlog(), where a shipper runs
    control_scheduling: str = "normal"
    recording: str = ""  # the running episode, if any
    camera_frames: dict = field(default_factory=dict)  # camera -> frames received in the window
    camera_refused: int = 0
    camera_restarts: int = 0
    camera_aborts: int = 0  # episodes aborted: the camera process could not record their frames
    camera_unrecorded: int = 0  # ticks run unrecorded: the camera process's recording was too far behind


@dataclass
class Status:
    name: str
    level: int
    message: str
    values: dict


def _p99(xs: list) -> float:
    if not xs:
        return 0.0
    s = sorted(xs)
    return float(s[min(len(s) - 1, int(round(0.99 * (len(s) - 1))))])


def _level(value: float, warn: float, error: float | None, above: bool = True) -> int:
    if above:
        return ERROR if error is not None and value > error else WARN if value > warn else OK
    return ERROR if error is not None and value < error else WARN if value < warn else OK


def assess(w: Window) -> list[Status]:
    out = []
    t = THRESHOLDS
    # control loop
    p99 = _p99(w.lateness_ms)
    lat = _level(p99 / w.period_ms, *t["lateness_p99_periods"])
    drop = _level(w.dropped_ticks, t["dropped_ticks"][0] - 0.5, t["dropped_ticks"][1] - 0.5)
    level = max(lat, drop)
    msg = ("ok" if level == OK else
           f"{w.dropped_ticks} dropped ticks" if drop >= lat else f"tick lateness p99 {p99:.1f} ms")
    out.append(Status("control loop", level, msg, {
        "ticks": w.ticks, "lateness_p99_ms": round(p99, 2), "dropped_ticks": w.dropped_ticks,
        "period_ms": round(w.period_ms, 3), "scheduling": w.control_scheduling, "episode": w.recording or "none"}))
    # joint state (and the cameras' staleness, which the same alignment counts)
    if w.state_age_ms is None:
        age_level, age_msg = ERROR, "no valid joint state yet"
    else:
        age_level = (ERROR if w.state_age_ms > STATE_AGE_ERROR_MS else
                     WARN if w.state_age_ms > t["state_age_periods"][0] * w.period_ms else OK)
        age_msg = f"last joint state {w.state_age_ms:.0f} ms ago"
    stale_share = w.stale_samples / w.ticks if w.ticks else 0.0
    stale_level = _level(stale_share, *t["stale_share"])
    refused_level = (OK if not w.joint_states_refused else
                     ERROR if w.joint_states_refused >= w.joint_states_received else WARN)
    level = max(age_level, stale_level, refused_level)
    msg = ("ok" if level == OK else age_msg if age_level == level else
           f"{w.joint_states_refused} joint states refused ({w.last_refusal})" if refused_level == level else
           f"{stale_share:.0%} of ticks used a stale sample")
    out.append(Status("joint state", level, msg, {
        "state_age_ms": "none" if w.state_age_ms is None else round(w.state_age_ms, 1),
        "stale_samples": w.stale_samples, "refused": w.joint_states_refused,
        "received": w.joint_states_received, "last_refusal": w.last_refusal or "none"}))
    # policy
    if not w.policy:
        out.append(Status("policy", OK, "no policy configured", {}))
    else:
        hold_share = w.deadline_holds / w.ticks if w.ticks else 0.0
        hold_level = _level(hold_share, *t["deadline_hold_share"])
        rt = _p99(w.round_trips_ms)
        rt_level = _level(rt / w.deadline_ms, *t["round_trip_deadlines"]) if w.round_trips_ms else OK
        rej_level = OK if not w.policy_rejected else ERROR if not w.round_trips_ms else WARN
        level = max(hold_level, rt_level, rej_level)
        msg = ("ok" if level == OK else
               f"{w.policy_rejected} requests refused by the server: {w.last_rejection}" if rej_level == level else
               f"{w.deadline_holds} ticks held past the deadline" if hold_level == level
               else f"inference round trip p99 {rt:.0f} ms")
        out.append(Status("policy", level, msg, {
            "deadline_holds": w.deadline_holds, "round_trip_p99_ms": round(rt, 1),
            "answers": len(w.round_trips_ms), "errors": w.policy_errors, "rejected": w.policy_rejected,
            "last_rejection": w.last_rejection or "none"}))
    # cameras
    if w.camera_frames:
        silent = [c for c, n in w.camera_frames.items() if n == 0]
        level = (ERROR if silent or w.camera_aborts else
                 WARN if (w.camera_refused or w.camera_restarts or w.camera_unrecorded) else OK)
        msg = (f"no frame from {', '.join(silent)}" if silent else
               "episode aborted: the camera process could not record it" if w.camera_aborts else
               f"{w.camera_unrecorded} ticks not recorded: the recording is behind" if w.camera_unrecorded else
               f"camera process restarted" if w.camera_restarts else
               f"{w.camera_refused} frames refused" if w.camera_refused else "ok")
        out.append(Status("cameras", level, msg, {**{f"frames_{c}": n for c, n in w.camera_frames.items()},
                                                  "refused": w.camera_refused, "restarts": w.camera_restarts,
                                                  "aborted_episodes": w.camera_aborts,
                                                  "unrecorded_ticks": w.camera_unrecorded}))
    # registration backlog
    level = _level(w.pending_registrations, *t["pending_registrations"])
    out.append(Status("registration", level, "ok" if level == OK else
                      f"{w.pending_registrations} episodes wait to be registered",
                      {"pending": w.pending_registrations}))
    # disk reserve
    if w.disk_free_bytes is None:
        out.append(Status("disk", ERROR, "the episode store's disk cannot be read", {}))
    else:
        gib = w.disk_free_bytes / GIB
        warn, error = t["disk_free_gib"]
        level = _level(gib, warn, error, above=False)
        refusing = w.disk_free_bytes < w.disk_reserve_bytes
        level = ERROR if refusing else level
        msg = ("episodes refused: free space below the reserve" if refusing else
               "ok" if level == OK else f"{gib:.1f} GiB free under the episode store")
        out.append(Status("disk", level, msg, {"free_gib": round(gib, 2),
                                               "reserve_gib": round(w.disk_reserve_bytes / GIB, 2)}))
    # shipping backlog
    if w.ship_backlog is not None:
        b = w.ship_backlog
        if "error" in b:
            out.append(Status("shipping", ERROR, f"backlog unreadable: {b['error']}", {}))
        else:
            level = max(_level(b["episodes"], *t["ship_backlog_episodes"]), WARN if b["refused"] else OK)
            waiting = f"{b['episodes']} episodes wait to be shipped"
            refused = f"{b['refused']} episodes refused by the central store"
            msg = "ok" if level == OK else "; ".join(m for m, on in (
                (waiting, b["episodes"] > t["ship_backlog_episodes"][0]), (refused, b["refused"])) if on)
            out.append(Status("shipping", level, msg, {"episodes": b["episodes"], "bytes": b["bytes"],
                                                       "refused": b["refused"], "oldest": b["oldest"] or ""}))
    return out
