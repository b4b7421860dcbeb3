"""Who drives the arm this tick, without ROS: the teleoperator while engaged, else the next action
of the current policy chunk, else hold position (after the deadline for a fresh chunk). And the
causal alignment of sensor samples to a tick, and the ticks a policy reading several of them gets
(`TickHistory`). Pure Python + numpy, so it is tested directly.

Safety invariant: every action `decide` returns is finite, of size action_dim and within [low, high].
A policy chunk that is not (n >= 1, action_dim) or holds NaN/infinity is refused whole at
`offer_chunk` (`refused_chunks`); a teleoperator command that is not finite or of the wrong size is
refused at `decide`, which then holds position (`refused_commands`, the decision flagged `refused`).
A position hold on a non-finite measured state keeps the last command instead."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from data.schema import ActionSource


@dataclass
class Sample:
    stamp_ns: int
    value: object


class SampleBuffer:
    """The latest sample at or before a tick's time (never a newer one: causal), and how stale it is.
    Holds a few samples per stream, because a message stamped before the tick may arrive after a
    newer one was already received."""

    def __init__(self, keep: int = 8):
        self._samples: deque[Sample] = deque(maxlen=keep)
        self._lock = threading.Lock()

    def add(self, stamp_ns: int, value) -> None:
        with self._lock:
            self._samples.append(Sample(stamp_ns, value))

    def at(self, tick_ns: int) -> Sample | None:
        with self._lock:
            best = None
            for s in self._samples:
                if s.stamp_ns <= tick_ns and (best is None or s.stamp_ns > best.stamp_ns):
                    best = s
            return best


@dataclass
class Decision:
    action: np.ndarray
    source: ActionSource
    policy_version: str | None
    proposed: np.ndarray | None  # the policy chunk this action came from (None: human or hold)
    late: bool = False  # the policy had no fresh action by the deadline: holding position
    refused: bool = False  # the human's command was not a finite action_dim vector: holding instead


@dataclass
class ChunkQueue:
    """The actions of the newest chunk not yet executed, with the version that computed it."""

    actions: deque = field(default_factory=deque)
    version: str | None = None
    chunk: np.ndarray | None = None
    obs_tick: int = -1  # the tick whose observation produced the chunk


class ActionArbiter:
    """One decision per control tick. Chunks arrive asynchronously (`offer_chunk`); a chunk computed
    on an observation older than the last human release is dropped, so control resumes from a chunk
    of the current observation, never from a stale queue."""

    def __init__(self, action_dim: int, low: np.ndarray, high: np.ndarray, deadline_ticks: int,
                 refill_below: int, execute: int | None = None, hold_mode: str = "zero_delta",
                 hold_keep: tuple[int, ...] = ()):
        self.low, self.high = np.asarray(low, np.float32), np.asarray(high, np.float32)
        self.action_dim, self.deadline_ticks, self.refill_below = action_dim, deadline_ticks, refill_below
        self.execute = execute  # actions used per chunk (None: the whole chunk)
        self.queue = ChunkQueue()
        self._lock = threading.Lock()
        self._was_engaged = False
        self._released_at = -1
        self._start = -1  # the tick the current episode started at (reset)
        self._starved_since: int | None = None
        self.late_ticks = 0
        # "zero_delta": delta/velocity commands, hold = 0 (except `hold_keep` dims, e.g. a gripper,
        # which keep their last command); "position": absolute commands, hold = the measured state.
        self.hold_mode, self.hold_keep = hold_mode, tuple(hold_keep)
        self._last = np.zeros(action_dim, np.float32)
        self.refused_chunks = 0
        self.refused_commands = 0

    def _valid(self, a, ndim: int) -> bool:
        """A finite array of action_dim vectors (one vector, or a chunk of at least one)."""
        try:
            a = np.asarray(a, np.float64)
        except (TypeError, ValueError):
            return False
        return (a.ndim == ndim and a.shape[-1] == self.action_dim and a.size > 0 and bool(np.isfinite(a).all()))

    def offer_chunk(self, chunk: np.ndarray, version: str, obs_tick: int) -> bool:
        if not self._valid(chunk, 2):
            with self._lock:
                self.refused_chunks += 1
            return False
        with self._lock:
            if self._was_engaged or obs_tick < self._released_at or obs_tick <= self.queue.obs_tick:
                return False  # the human drives, or older than the hand-over or than what we hold
            n = len(chunk) if self.execute is None else min(self.execute, len(chunk))
            self.queue = ChunkQueue(deque(np.asarray(chunk[:n], np.float32)), version, np.asarray(chunk), obs_tick)
            return True

    def reset(self, tick: int) -> None:
        """A new episode starts at `tick`: nothing planned before it is executed in it, and no decision
        for an earlier tick (one of the last episode the control loop was still deciding) changes it."""
        with self._lock:
            self._start = tick
            self.queue = ChunkQueue(obs_tick=tick - 1)
            self._was_engaged = False
            self._released_at = tick
            self._starved_since = None
            self._last = np.zeros(self.action_dim, np.float32)

    def next_action(self) -> np.ndarray | None:
        """The action the policy would drive next (clipped), or None when nothing is queued."""
        with self._lock:
            return self._clip(self.queue.actions[0]) if self.queue.actions else None

    def needs_chunk(self) -> bool:
        """Ask for the next chunk ahead of time, when the queue runs low."""
        with self._lock:
            return len(self.queue.actions) < self.refill_below and not self._was_engaged

    def decide(self, tick: int, state: np.ndarray, human: np.ndarray | None, engaged: bool) -> Decision:
        with self._lock:
            if tick < self._start:  # a tick from before the reset, decided after it: the new episode's
                # queue, hand-over, deadline clock and last command stay as the reset left them
                if engaged and human is not None and self._valid(human, 1):
                    return Decision(self._clip(human), ActionSource.CORRECTION, None, None)
                return Decision(self._hold(state), ActionSource.HOLD, None, None)
            if engaged and human is not None:
                self._was_engaged = True
                self.queue = ChunkQueue(obs_tick=self.queue.obs_tick)  # drop the stale plan
                if not self._valid(human, 1):
                    self.refused_commands += 1
                    return self._out(Decision(self._hold(state), ActionSource.HOLD, None, None, refused=True))
                return self._out(Decision(self._clip(human), ActionSource.CORRECTION, None, None))
            if self._was_engaged:  # released: only chunks from observations from now on count
                self._was_engaged = False
                self._released_at = tick
                self.queue = ChunkQueue(obs_tick=tick - 1)
            if self.queue.actions:
                self._starved_since = None
                a = self.queue.actions.popleft()
                return self._out(Decision(self._clip(a), ActionSource.POLICY, self.queue.version, self.queue.chunk))
            if self._starved_since is None:
                self._starved_since = tick
            self.late_ticks += 1
            late = tick - self._starved_since >= self.deadline_ticks
            return self._out(Decision(self._hold(state), ActionSource.HOLD, None, None, late=late))

    def hold(self, state: np.ndarray) -> Decision:
        """A hold outside the tick-by-tick arbitration: what the bridge sends once when the arm is about
        to be left alone right after a human drove it, so that a controller keeping its last command
        (a delta, a velocity) stops instead of applying the human's last one."""
        with self._lock:
            return self._out(Decision(self._hold(state), ActionSource.HOLD, None, None))

    def _out(self, d: Decision) -> Decision:
        self._last = d.action
        return d

    def _clip(self, a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, np.float32)
        return np.clip(a, self.low, self.high)

    def _hold(self, state: np.ndarray) -> np.ndarray:
        if self.hold_mode == "position":
            measured = np.asarray(state[: self.action_dim], np.float32)
            if measured.shape == (self.action_dim,) and np.isfinite(measured).all():
                return self._clip(measured)
            return self._last.copy()  # no trustworthy measurement: keep commanding what was last sent
        a = np.zeros(self.action_dim, np.float32)
        for i in self.hold_keep:
            a[i] = self._last[i]
        return a


class TickHistory:
    """The control ticks before the current one that a policy reading the last `n_obs_steps` ticks
    (LeRobot diffusion) gets with it, kept by whoever sees every tick: the bridge, the simulated arm's
    PolicyActor. `observe` each tick of an episode after its decision (whoever drove: policy, human or
    hold, as the recorded episode that training windows holds them), `reset` at the episode's start.
    Until the history is full, the oldest known tick (the episode's first) stands in for the missing
    ones, as training windows an episode's first ticks (training/steps.py `history`) and as LeRobot's
    select_action fills its queue. An item is (state, {camera: frame}); nothing here copies."""

    def __init__(self, n_obs_steps: int = 1):
        self._past: deque = deque(maxlen=max(0, int(n_obs_steps) - 1))

    @property
    def n_obs_steps(self) -> int:
        return self._past.maxlen + 1

    def resize(self, n_obs_steps: int) -> None:
        """Another policy reads another number of ticks: the newest ones kept are kept."""
        if max(0, int(n_obs_steps) - 1) != self._past.maxlen:
            self._past = deque(self._past, maxlen=max(0, int(n_obs_steps) - 1))

    def reset(self) -> None:
        """A new episode: no history."""
        self._past.clear()

    def observe(self, state: np.ndarray, images: dict | None = None) -> None:
        """A tick seen: it becomes history for the next ones (kept only for a policy that reads it)."""
        if self._past.maxlen:
            self._past.append((state, dict(images or {})))

    def past(self) -> list[tuple[np.ndarray, dict]]:
        """The ticks kept, oldest first (fewer than n_obs_steps - 1 early in an episode)."""
        return list(self._past)

    @staticmethod
    def window(past, current: tuple, n_obs_steps: int) -> list[tuple]:
        """The last `n_obs_steps` ticks ending with `current`, oldest first: the newest of `past`
        before it, the oldest known tick standing in for those not seen."""
        ticks = (list(past) + [current])[-max(1, int(n_obs_steps)):]
        return [ticks[0]] * (int(n_obs_steps) - len(ticks)) + ticks


DEADLINE_S = 0.2  # no fresh policy action this long after the queue ran dry: flagged late
REFILL_BELOW = 4  # ask for the next chunk when fewer actions than this are queued


def build_arbiter(action_dim: int, *, period_s: float, low=-1.0, high=1.0, deadline_s: float = DEADLINE_S,
                  refill_below: int = REFILL_BELOW, execute: int | None = None, hold_mode: str = "zero_delta",
                  hold_keep: tuple[int, ...] = ()) -> ActionArbiter:
    """The arbiter of one arm, from its chunk execution settings in physical units: the ROS bridge
    and the simulated loop (training/sim) both build theirs here. `refill_below` covers the policy's
    latency (an in-process policy answers within the tick: 1, ask when the queue is empty);
    `execute`: actions used per chunk (None or 0: the whole chunk); `low`/`high`: one value or
    one per dimension, finite, low <= high; `hold_keep`: action dimensions (-1: none, the ROS parameter's
    placeholder for an empty list). ValueError, naming the setting, for anything else: every command an arm
    gets is clipped to these limits and every hold built from these dimensions."""
    lim = {}
    for name, v in (("action_low", low), ("action_high", high)):
        a = np.asarray(v, np.float64).reshape(-1)
        if a.size not in (1, action_dim):
            raise ValueError(f"{name}: {a.size} values for {action_dim} action dimensions (give 1, or one per dimension)")
        if not np.isfinite(a).all() or (np.abs(a) > np.finfo(np.float32).max).any():
            raise ValueError(f"{name}: every limit must be a finite number, got {a.tolist()}")
        lim[name] = np.broadcast_to(a.astype(np.float32), (action_dim,))
    if (bad := np.flatnonzero(lim["action_low"] > lim["action_high"])).size:
        raise ValueError(f"action_low is above action_high in dimension(s) {bad.tolist()}: every command would be pinned")
    keep = tuple(int(i) for i in hold_keep)
    if any(not -1 <= i < action_dim for i in keep):
        raise ValueError(f"hold_keep: {list(keep)} names a dimension outside 0..{action_dim - 1} (-1: none)")
    if hold_mode not in ("zero_delta", "position"):
        raise ValueError(f"hold_mode: {hold_mode!r} is not one of zero_delta, position")
    if int(refill_below) < 1:
        raise ValueError(f"refill_below: {refill_below} would never ask the policy for a chunk (at least 1)")
    if not (np.isfinite(period_s) and period_s > 0 and np.isfinite(deadline_s) and deadline_s >= 0):
        raise ValueError(f"control period {period_s!r} s and deadline {deadline_s!r} s must be finite, the period > 0")
    return ActionArbiter(action_dim, lim["action_low"], lim["action_high"],
                         max(1, int(round(deadline_s / period_s))), int(refill_below), execute=int(execute or 0) or None,
                         hold_mode=hold_mode, hold_keep=tuple(i for i in keep if i >= 0))


class JointMap:
    """A sensor_msgs/JointState's positions in a configured joint order, matched by name: any order,
    extra joints (gripper fingers, other arms on the same topic) ignored, a missing one refused. The
    index is computed once per distinct name list (ros2_control sends the same list every time).
    With no configured names, positions are taken as they come and must be exactly `dim` of them."""

    def __init__(self, names: list[str] | tuple[str, ...], dim: int):
        self.names = tuple(n for n in names if n)
        if self.names and len(self.names) != dim:
            raise ValueError(f"{len(self.names)} joint names for {dim} dimensions")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"joint names repeat: {list(self.names)}")
        self.dim = dim
        self._index: dict[tuple[str, ...], np.ndarray | str] = {}
        self.missing: set[str] = set()  # configured joints some refused message lacked

    def __call__(self, names, positions) -> np.ndarray | str:
        """The positions in the configured order as float64, or why the message is refused."""
        pos = np.asarray(positions, np.float64)
        if not self.names:
            if pos.shape != (self.dim,):
                return f"{pos.size} positions, expected {self.dim}"
            return pos if np.all(np.isfinite(pos)) else "non-finite position"
        key = tuple(names)
        idx = self._index.get(key)
        if idx is None:
            if len(self._index) > 64:  # a publisher varying its names: do not grow without bound
                self._index.clear()
            where = {n: i for i, n in enumerate(key)}
            missing = [n for n in self.names if n not in where]
            idx = (f"missing joints {missing}" if missing else
                   "joint names repeat" if len(where) != len(key) else np.array([where[n] for n in self.names]))
            self._index[key] = idx
        if isinstance(idx, str):
            if idx.startswith("missing"):
                self.missing.update(n for n in self.names if n not in key)
            return idx
        if len(pos) != len(key):
            return f"{len(key)} names, {len(pos)} positions"
        out = pos[idx]
        return out if np.all(np.isfinite(out)) else "non-finite position"

    def order(self, target: list[str] | tuple[str, ...]) -> np.ndarray | None:
        """Indices putting a vector in this map's order into `target`'s order (a controller's joint
        list); None when `target` is empty (same order). Raises when `target` is not a permutation."""
        target = tuple(n for n in target if n)
        if not target or target == self.names:
            return None
        if sorted(target) != sorted(self.names):
            raise ValueError(f"controller joints {list(target)} are not the joints {list(self.names)}")
        return np.array([self.names.index(n) for n in target])
