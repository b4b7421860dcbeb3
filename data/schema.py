"""The episode schema (DESIGN §4): what one control tick and one episode hold, and the checks
every appended tick passes before it can touch the store."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from enum import IntEnum, StrEnum
from typing import Any, Mapping

import numpy as np

SCHEMA_VERSION = 1
INT64_MAX = 2**63 - 1  # catalog time columns (SQLite, PostgreSQL BIGINT)
INT32_MAX = 2**31 - 1  # catalog count columns (PostgreSQL INTEGER)
MAX_FPS = 10_000.0
# Control characters (C0, DEL, C1): never in a name the catalog keeps, nor in an id or free text the API takes.
CONTROL_CHARS = r"\x00-\x1f\x7f-\x9f"  # a regex character range
_CONTROL_RE = re.compile(f"[{CONTROL_CHARS}]")
SOURCE_COUNT_KEYS = ("policy", "correction", "demonstration", "hold")  # extra["source_counts"], by ActionSource


def count_sources(action_source: np.ndarray) -> dict[str, int]:
    """An episode's `extra["source_counts"]`: ticks per action source, from its action_source array."""
    src = np.asarray(action_source)
    return {k: int((src == i).sum()) for i, k in enumerate(SOURCE_COUNT_KEYS)}

# Names of the per-tick arrays inside an episode group.
TIMESTAMP = "timestamp_ns"
STATE = "observation.state"
ACTION = "action"
ACTION_SOURCE = "action_source"
PROPOSED = "proposed_action"
POLICY_VERSION = "policy_version_index"
IMAGES = "images"  # subgroup: one array per camera

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


class ActionSource(IntEnum):
    """Who produced the executed action of a tick."""

    POLICY = 0
    CORRECTION = 1  # a teleoperator had taken over
    DEMONSTRATION = 2
    HOLD = 3  # no fresh action by the deadline: the arm held position


class Outcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    UNKNOWN = "unknown"


class EpisodeStatus(StrEnum):
    COMPLETE = "complete"  # committed by its writer
    INCOMPLETE = "incomplete"  # recovered by fsck up to the last flushed chunk


class SchemaError(ValueError):
    """A tick or an episode attribute does not match the schema; names the offending field."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


def check_name(kind: str, value: Any) -> str:
    """A name an episode records and the catalog keeps as text (a policy version, a labeller):
    1-128 characters, no control characters."""
    if not isinstance(value, str) or not 0 < len(value) <= 128 or _CONTROL_RE.search(value):
        raise SchemaError(kind, f"{str(value)[:140]!r} is not a name (1-128 characters, no control characters)")
    return value


def check_id(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise SchemaError(kind, f"{value!r} is not a valid id (letters, digits, '_', '.', '-'; max 128)")
    return value


@dataclass(frozen=True)
class CameraSpec:
    height: int
    width: int
    channels: int = 3

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)


@dataclass(frozen=True)
class EpisodeFeatures:
    """Shapes of everything recorded per tick. Saved in each episode's attributes."""

    state_dim: int
    action_dim: int
    cameras: Mapping[str, CameraSpec] = field(default_factory=dict)
    # Length H of the action chunk the policy proposed at this tick (1 = single action).
    proposed_chunk: int = 1

    def __post_init__(self) -> None:
        if self.state_dim < 1 or self.action_dim < 1 or self.proposed_chunk < 1:
            raise SchemaError("features", "state_dim, action_dim and proposed_chunk must be >= 1")
        for name, cam in self.cameras.items():
            check_id("camera", name)
            if cam.channels not in (1, 3):
                raise SchemaError(f"{IMAGES}.{name}", "channels must be 1 or 3")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cameras"] = {k: asdict(v) for k, v in self.cameras.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "EpisodeFeatures":
        return cls(
            state_dim=int(d["state_dim"]),
            action_dim=int(d["action_dim"]),
            cameras={k: CameraSpec(**v) for k, v in d.get("cameras", {}).items()},
            proposed_chunk=int(d.get("proposed_chunk", 1)),
        )


@dataclass
class Tick:
    """One control tick as the writer receives it."""

    timestamp_ns: int
    state: np.ndarray
    action: np.ndarray
    source: ActionSource = ActionSource.POLICY
    images: Mapping[str, np.ndarray] = field(default_factory=dict)
    proposed: np.ndarray | None = None  # (H, A) or (A,); None when no policy proposal exists
    policy_version: str | None = None


def _vector(name: str, value: Any, dim: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu":
        raise SchemaError(name, f"expected numbers, got dtype {arr.dtype}")
    if arr.shape != (dim,):
        raise SchemaError(name, f"expected shape ({dim},), got {arr.shape}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise SchemaError(name, "contains NaN or infinite values")
    return arr


def validate_tick(tick: Tick, features: EpisodeFeatures, last_timestamp_ns: int | None) -> Tick:
    """Return a normalised copy of `tick`, or raise SchemaError naming the first bad field."""
    if not isinstance(tick.timestamp_ns, (int, np.integer)) or isinstance(tick.timestamp_ns, bool):
        raise SchemaError(TIMESTAMP, f"expected an integer nanosecond timestamp, got {type(tick.timestamp_ns).__name__}")
    ts = int(tick.timestamp_ns)
    if ts <= 0:
        raise SchemaError(TIMESTAMP, "must be positive")
    if last_timestamp_ns is not None and ts <= last_timestamp_ns:
        raise SchemaError(TIMESTAMP, f"must increase: {ts} after {last_timestamp_ns}")
    state = _vector(STATE, tick.state, features.state_dim)
    action = _vector(ACTION, tick.action, features.action_dim)
    try:
        source = ActionSource(int(tick.source))
    except (ValueError, TypeError):
        raise SchemaError(ACTION_SOURCE, f"unknown action source {tick.source!r}") from None

    H, A = features.proposed_chunk, features.action_dim
    if tick.proposed is None:
        proposed = np.full((H, A), np.nan, np.float32)  # NaN marks "no proposal"
    else:
        p = np.asarray(tick.proposed)
        if p.dtype.kind not in "fiu":
            raise SchemaError(PROPOSED, f"expected numbers, got dtype {p.dtype}")
        if p.shape == (A,) and H == 1:
            p = p[None]
        if p.shape != (H, A):
            raise SchemaError(PROPOSED, f"expected shape ({H}, {A}), got {p.shape}")
        proposed = p.astype(np.float32)
        if not np.isfinite(proposed).all():
            raise SchemaError(PROPOSED, "contains NaN or infinite values")

    images = dict(tick.images)
    expected, got = set(features.cameras), set(images)
    if got - expected:
        raise SchemaError(IMAGES, f"unknown camera(s) {sorted(got - expected)}; expected {sorted(expected)}")
    if expected - got:
        raise SchemaError(IMAGES, f"missing camera(s) {sorted(expected - got)}")
    for name, img in images.items():
        img = np.asarray(img)
        cam = features.cameras[name]
        if img.ndim == 2 and cam.channels == 1:
            img = img[..., None]
        if img.dtype != np.uint8:
            raise SchemaError(f"{IMAGES}.{name}", f"expected uint8, got {img.dtype}")
        if img.shape != cam.shape:
            raise SchemaError(f"{IMAGES}.{name}", f"expected shape {cam.shape}, got {img.shape}")
        images[name] = img

    version = tick.policy_version
    if version is not None:
        check_name("policy_version", version)
    return Tick(ts, state, action, source, images, proposed, version)


@dataclass
class EpisodeInfo:
    """Episode attributes, stored in the episode group's attributes and mirrored in the catalog."""

    episode_id: str
    robot_id: str
    task_id: str
    instruction: str
    fps: float
    features: EpisodeFeatures
    start_time_ns: int
    end_time_ns: int | None = None
    num_ticks: int = 0
    status: EpisodeStatus | None = None  # None while in flight
    outcome: Outcome = Outcome.UNKNOWN
    outcome_labeller: str | None = None
    outcome_labelled_at_ns: int | None = None
    policy_versions: list[str] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_attrs(self) -> dict[str, Any]:
        d = asdict(self)
        d["features"] = self.features.to_dict()
        d["status"] = None if self.status is None else str(self.status)
        d["outcome"] = str(self.outcome)
        return d

    @classmethod
    def from_attrs(cls, d: Mapping[str, Any]) -> "EpisodeInfo":
        if int(d.get("schema_version", -1)) > SCHEMA_VERSION:
            raise SchemaError("schema_version", f"episode schema {d['schema_version']} is newer than this code ({SCHEMA_VERSION})")
        return cls(
            episode_id=d["episode_id"],
            robot_id=d["robot_id"],
            task_id=d["task_id"],
            instruction=d.get("instruction", ""),
            fps=float(d["fps"]),
            features=EpisodeFeatures.from_dict(d["features"]),
            start_time_ns=int(d["start_time_ns"]),
            end_time_ns=None if d.get("end_time_ns") is None else int(d["end_time_ns"]),
            num_ticks=int(d.get("num_ticks", 0)),
            status=None if d.get("status") is None else EpisodeStatus(d["status"]),
            outcome=Outcome(d.get("outcome", "unknown")),
            outcome_labeller=d.get("outcome_labeller"),
            outcome_labelled_at_ns=d.get("outcome_labelled_at_ns"),
            policy_versions=list(d.get("policy_versions", [])),
            schema_version=int(d.get("schema_version", SCHEMA_VERSION)),
            extra=dict(d.get("extra", {})),
        )

    def check_values(self) -> "EpisodeInfo":
        """Values this store's writers never produce, refused (SchemaError naming the attribute): what an
        imported episode (an upload, a shipment) carries goes into catalog columns, playback arithmetic and
        tick-by-tick lookups, so its ids, rate, times and versions must be what a writer here could have written."""
        check_id("robot_id", self.robot_id)
        check_id("task_id", self.task_id)
        if not isinstance(self.instruction, str) or "\x00" in self.instruction:
            raise SchemaError("instruction", "text without NUL")
        if not (math.isfinite(self.fps) and 0 < self.fps <= MAX_FPS):
            raise SchemaError("fps", f"must be in (0, {MAX_FPS:g}], got {self.fps}")
        if self.outcome_labeller is not None:
            check_name("outcome_labeller", self.outcome_labeller)
        for name, top in (("start_time_ns", INT64_MAX), ("end_time_ns", INT64_MAX), ("outcome_labelled_at_ns", INT64_MAX),
                          ("num_ticks", INT32_MAX)):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, int) and 0 <= v <= top):
                raise SchemaError(name, f"must be an integer in 0..{top}, got {str(v)[:40]}")
        if not 0 <= self.schema_version <= SCHEMA_VERSION:
            raise SchemaError("schema_version", f"must be in 0..{SCHEMA_VERSION}, got {self.schema_version}")
        for v in self.policy_versions:
            check_name("policy_versions", v)
        if not isinstance(self.extra, dict):
            raise SchemaError("extra", "must be an object")
        events = self.extra.get("events", [])
        if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
            raise SchemaError("extra.events", "must be a list of objects")
        counts = self.extra.get("source_counts", {})
        if not isinstance(counts, dict) or not all(
                k in SOURCE_COUNT_KEYS and type(v) is int and 0 <= v <= self.num_ticks for k, v in counts.items()):
            raise SchemaError("extra.source_counts", f"must map {', '.join(SOURCE_COUNT_KEYS)} to tick counts")
        stack = [self.extra]
        while stack:  # events' reasons and the like become catalog text: no NUL anywhere in them
            x = stack.pop()
            if isinstance(x, str) and "\x00" in x:
                raise SchemaError("extra", "text with a NUL")
            stack.extend(x.values() if isinstance(x, dict) else x if isinstance(x, list) else [])
        return self

    @property
    def duration_s(self) -> float:
        if self.end_time_ns is None:
            return math.nan
        return (self.end_time_ns - self.start_time_ns) / 1e9
