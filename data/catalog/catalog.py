"""Catalog: register committed episodes, query them, keep the outcome-label history, reconcile.

SQLite by default (WAL, so several robots' writers and a reader work at once); any SQLAlchemy URL
(PostgreSQL for a fleet). Migrations run on open through Alembic.

A row is keyed by the name of the episode's directory in the store; an episode whose attributes
name another id is refused (StoreError), so one directory can never rewrite another episode's row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from data.effort import EpisodeEffort, count_takeovers, takeover_after
from data.catalog.models import Episode, EpisodeAnnotation, EpisodePolicyVersion, OutcomeLabel, Robot, Task
from data.schema import Outcome, count_sources
from data.sqldb import current_revision, open_engine, upgrade_schema
from data.store import MIN_EPISODE_TICKS, EpisodeData, EpisodeStore, StoreError

MIGRATIONS = Path(__file__).parent / "migrations"
UPSERT_ATTEMPTS = 5  # each retry finds at least one more of the racing rows in place


def default_catalog_url(store_root: str | Path) -> str:
    return f"sqlite:///{Path(store_root).expanduser().resolve() / 'catalog.sqlite'}"


@dataclass
class EpisodeRecord:
    """One catalog row, detached from the database session."""

    id: str
    robot_id: str
    task_id: str
    instruction: str
    status: str
    outcome: str
    outcome_labeller: str | None
    outcome_labelled_at_ns: int | None
    num_ticks: int
    num_policy_ticks: int
    num_correction_ticks: int
    num_demonstration_ticks: int
    num_hold_ticks: int
    num_takeovers: int
    evaluation: bool
    fps: float
    start_time_ns: int
    end_time_ns: int
    location: str
    checksum: str
    policy_versions: list[str] = field(default_factory=list)
    # per takeover whose mistake is known (a `mistake` annotation): seconds from the mistake to the takeover
    mistake_to_takeover_s: list[float] = field(default_factory=list)

    @classmethod
    def from_row(cls, e: Episode) -> "EpisodeRecord":
        derived = ("policy_versions", "mistake_to_takeover_s")
        by_takeover = {}  # one mistake per takeover: the newest mark wins (a reviewer's over the station's)
        for a in e.annotations:
            if a.kind == "mistake" and e.fps > 0:
                by_takeover[a.end_tick] = (a.end_tick - a.start_tick) / e.fps
        return cls(**{k: getattr(e, k) for k in cls.__dataclass_fields__ if k not in derived},
                   policy_versions=sorted(p.policy_version for p in e.policy_versions),
                   mistake_to_takeover_s=[by_takeover[t] for t in sorted(by_takeover)])

    def effort(self) -> EpisodeEffort:
        """The episode as data/effort.py counts it."""
        return EpisodeEffort(self.num_ticks, self.num_correction_ticks, self.num_takeovers, self.fps,
                             self.outcome == "success", tuple(self.mistake_to_takeover_s))

    @property
    def correction_rate(self) -> float:
        return self.num_correction_ticks / self.num_ticks if self.num_ticks else 0.0


@dataclass
class TrainingSelection:
    """What a training run may use of a query's episodes, what it must leave out (id -> why), and the
    stretches of usable episodes it must not learn from (id -> [{start_tick, end_tick, why}], inclusive)."""

    records: list[EpisodeRecord]
    excluded: dict[str, str] = field(default_factory=dict)
    masked: dict[str, list[dict]] = field(default_factory=dict)


@dataclass
class ReconcileReport:
    added: list[str] = field(default_factory=list)  # in the store, not in the catalog
    updated: list[str] = field(default_factory=list)  # checksum or labels differed
    removed: list[str] = field(default_factory=list)  # in the catalog, gone from the store

    @property
    def consistent(self) -> bool:
        return not (self.added or self.updated or self.removed)


def _label_history(ep: EpisodeData) -> list[dict]:
    """The commit-time outcome (if any) followed by later labels."""
    history = []
    attrs_outcome = ep.group.attrs.get("outcome", "unknown")
    if attrs_outcome != Outcome.UNKNOWN and ep.group.attrs.get("outcome_labeller"):
        history.append({"outcome": attrs_outcome, "labeller": ep.group.attrs["outcome_labeller"],
                        "labelled_at_ns": int(ep.group.attrs.get("outcome_labelled_at_ns") or ep.info.end_time_ns or 0)})
    return history + list(ep.labels)


RECORDED_BY = "station:"  # author prefix of what a robot's station recorded (token names cannot hold a colon)
MAX_RECORDED_MISTAKES = 1000  # per episode: a station that floods its events cannot flood the catalog


def recorded_mistakes(ep: EpisodeData) -> list[tuple[int, int, str]]:
    """(mistake tick, takeover tick, why) for each takeover the teleoperator station recorded a mistake
    for with the episode (`extra["events"]`, EpisodeWriter.note_event); of two mistakes before one
    takeover (the first one's takeover never reached the arm), the later."""
    out, src = {}, None
    for ev in ep.info.extra.get("events", [])[:MAX_RECORDED_MISTAKES]:
        if not isinstance(ev, dict) or ev.get("kind") != "mistake" or not isinstance(ev.get("tick"), int):
            continue  # an event of another kind, or written by something else: not ours to read
        if src is None:
            src = ep.action_source
        if not 0 <= ev["tick"] < len(src):
            continue
        took = takeover_after(src, ev["tick"])
        if took is not None:
            out[took] = (ev["tick"], took, str(ev.get("why", ""))[:200])
    return [out[t] for t in sorted(out)]


def _annotation(a: EpisodeAnnotation) -> dict:
    return {"id": a.id, "episode_id": a.episode_id, "kind": a.kind, "start_tick": a.start_tick,
            "end_tick": a.end_tick, "reason": a.reason, "author": a.author, "created_at_ns": a.created_at_ns}


class Catalog:
    def __init__(self, url: str):
        self.url = url
        self.engine: Engine = open_engine(url)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self.migrate()

    @classmethod
    def for_store(cls, store: EpisodeStore, url: str | None = None) -> "Catalog":
        return cls(url or default_catalog_url(store.root))

    def close(self) -> None:
        self.engine.dispose()

    # -- schema ---------------------------------------------------------------------------

    def current_revision(self) -> str | None:
        return current_revision(self.engine, "alembic_version")

    def migrate(self) -> None:
        """Bring the schema to the newest revision (a no-op when it is there already)."""
        upgrade_schema(self.engine, self.url, MIGRATIONS)

    # -- writing --------------------------------------------------------------------------

    def register(self, ep: EpisodeData) -> None:
        """Insert or refresh one committed episode (idempotent, also when two callers race)."""
        self.register_many([ep])

    def register_many(self, eps: Iterable[EpisodeData], *, authoritative: bool = False) -> int:
        """Insert or refresh episodes in one transaction. A robot, task or episode row that another
        writer inserted between our read and our insert makes the transaction fail on its unique
        key; it is then run again, and the second time the row is there to update. A snapshot whose
        newest label is older than the row's keeps the row's outcome (two labels at once), unless
        `authoritative` (reconcile: the store, read just now, is the truth)."""
        eps = list(eps)
        for attempt in range(UPSERT_ATTEMPTS):
            try:
                with self._session.begin() as s:
                    for ep in eps:
                        self._upsert(s, ep, authoritative)
                return len(eps)
            except IntegrityError:
                if attempt == UPSERT_ATTEMPTS - 1:
                    raise
        return 0

    def _upsert(self, s: Session, ep: EpisodeData, authoritative: bool = False) -> None:
        info = ep.info
        if info.episode_id != ep.path.name:
            raise StoreError(f"episode directory {ep.path.name} holds attributes of episode "
                             f"{str(info.episode_id)[:140]!r}; not indexed (run `recap data fsck --repair`)")
        now = time.time_ns()
        if s.get(Robot, info.robot_id) is None:
            s.add(Robot(id=info.robot_id, first_seen_ns=info.start_time_ns))
        task = s.get(Task, info.task_id)
        if task is None:
            s.add(Task(id=info.task_id, instruction=info.instruction))
        elif info.instruction and not task.instruction:
            task.instruction = info.instruction
        s.flush()
        counts = info.extra.get("source_counts", {})
        src = ep.action_source
        if not counts:  # recovered episodes: count from the data
            counts = count_sources(src)
        row = s.get(Episode, info.episode_id, with_for_update=True)  # PostgreSQL: concurrent registrations queue here
        outcome = {"outcome": str(info.outcome), "outcome_labeller": info.outcome_labeller,
                   "outcome_labelled_at_ns": info.outcome_labelled_at_ns}
        if row is None:  # a concurrent insert of the same id fails on its key and the transaction runs again
            row = Episode(id=info.episode_id, registered_at_ns=now, **outcome)
            s.add(row)
        row.robot_id, row.task_id, row.instruction = info.robot_id, info.task_id, info.instruction
        row.status = str(info.status)
        row.num_ticks = info.num_ticks
        row.num_policy_ticks = counts.get("policy", 0)
        row.num_correction_ticks = counts.get("correction", 0)
        row.num_demonstration_ticks = counts.get("demonstration", 0)
        row.num_hold_ticks = counts.get("hold", 0)
        row.num_takeovers = count_takeovers(src)
        row.fps = info.fps
        row.start_time_ns = info.start_time_ns
        row.end_time_ns = info.end_time_ns or info.start_time_ns
        row.location = ep.path.as_uri()
        row.checksum = ep.checksum
        row.schema_version = info.schema_version
        s.flush()  # from here this transaction writes: SQLite holds its write lock, PostgreSQL the row's
        # The outcome: a snapshot read before another writer's newer label (two labels at once) is older than the
        # row and leaves it as it is, decided in the UPDATE itself; `authoritative` (reconcile) always writes it.
        newer = Episode.id == info.episode_id
        if not authoritative:
            not_newer_than_ours = Episode.outcome_labelled_at_ns.is_(None)
            if info.outcome_labelled_at_ns is not None:
                not_newer_than_ours |= Episode.outcome_labelled_at_ns <= info.outcome_labelled_at_ns
            newer &= not_newer_than_ours
        s.execute(update(Episode).where(newer).values(**outcome).execution_options(synchronize_session=False))
        s.execute(delete(EpisodePolicyVersion).where(EpisodePolicyVersion.episode_id == info.episode_id))
        if authoritative:
            s.execute(delete(OutcomeLabel).where(OutcomeLabel.episode_id == info.episode_id))
        s.flush()
        for v in sorted(set(info.policy_versions)):
            s.add(EpisodePolicyVersion(episode_id=info.episode_id, policy_version=v))
        if not any(a.author.startswith(RECORDED_BY) for a in row.annotations):  # committed data never changes
            for start, took, why in recorded_mistakes(ep):
                row.annotations.append(EpisodeAnnotation(
                    episode_id=info.episode_id, kind="mistake", start_tick=start, end_tick=took,
                    reason=f"recorded by the teleoperator station ({why or 'takeover condition'}): "
                           f"{(took - start) / info.fps:.2f} s to the takeover",
                    author=RECORDED_BY + info.robot_id, created_at_ns=now))
        # the label history only grows: what the snapshot holds and the row lacks is added, nothing removed
        seen = set() if authoritative else {(at, who) for at, who in s.execute(select(
            OutcomeLabel.labelled_at_ns, OutcomeLabel.labeller).where(OutcomeLabel.episode_id == info.episode_id))}
        for lab in _label_history(ep):
            key = (lab["labelled_at_ns"], lab["labeller"])
            if key not in seen:
                seen.add(key)
                s.add(OutcomeLabel(episode_id=info.episode_id, **lab))

    def label(self, store: EpisodeStore, episode_id: str, outcome: Outcome | str, labeller: str) -> EpisodeRecord:
        """Change an episode's outcome: written to the store first (the source of truth), then indexed."""
        store.label(episode_id, outcome, labeller)
        self.register(store.open(episode_id))
        return self.get(episode_id)

    def set_evaluation(self, episode_ids: Sequence[str], evaluation: bool = True) -> list[EpisodeRecord]:
        """Flag episodes as recorded for evaluation (held out: `select_for_training` leaves them out),
        or clear the flag. KeyError names the first id the catalog does not hold; nothing changes then."""
        with self._session.begin() as s:
            rows = []
            for eid in episode_ids:
                row = s.get(Episode, eid)
                if row is None:
                    raise KeyError(f"episode {eid} is not in the catalog")
                rows.append(row)
            for row in rows:
                row.evaluation = bool(evaluation)
            s.flush()
            return [EpisodeRecord.from_row(r) for r in rows]

    ANNOTATION_KINDS = ("bad_correction", "mistake")

    def annotate(self, episode_id: str, kind: str, start_tick: int, end_tick: int, reason: str, author: str) -> dict:
        """Mark ticks start..end (inclusive) of an episode. A `bad_correction` stretch is left out of
        every later training run (select_for_training), with this reason; a `mistake` runs from the
        policy's mistake to the takeover that followed it (data.effort.takeover_after). KeyError:
        unknown episode; ValueError: a kind or stretch that does not fit it."""
        if kind not in self.ANNOTATION_KINDS:
            raise ValueError(f"kind {kind!r}: one of {', '.join(self.ANNOTATION_KINDS)}")
        with self._session.begin() as s:
            row = s.get(Episode, episode_id)
            if row is None:
                raise KeyError(f"episode {episode_id} is not in the catalog")
            if not 0 <= start_tick <= end_tick < row.num_ticks:
                raise ValueError(f"ticks {start_tick}..{end_tick}: outside the episode's 0..{row.num_ticks - 1}")
            a = EpisodeAnnotation(episode_id=episode_id, kind=kind, start_tick=start_tick, end_tick=end_tick,
                                  reason=reason, author=author, created_at_ns=time.time_ns())
            s.add(a)
            s.flush()
            return _annotation(a)

    def annotations(self, episode_ids: Sequence[str] | None = None) -> dict[str, list[dict]]:
        """episode id -> its annotations, oldest first."""
        q = select(EpisodeAnnotation).order_by(EpisodeAnnotation.id)
        if episode_ids is not None:
            q = q.where(EpisodeAnnotation.episode_id.in_(list(episode_ids)))
        out: dict[str, list[dict]] = {}
        with self._session() as s:
            for a in s.scalars(q).all():
                out.setdefault(a.episode_id, []).append(_annotation(a))
        return out

    def remove(self, episode_ids: Sequence[str]) -> None:
        with self._session.begin() as s:
            for eid in episode_ids:
                row = s.get(Episode, eid)
                if row is not None:
                    s.delete(row)

    # -- reading --------------------------------------------------------------------------

    def get(self, episode_id: str) -> EpisodeRecord:
        with self._session() as s:
            row = s.get(Episode, episode_id)
            if row is None:
                raise KeyError(f"episode {episode_id} is not in the catalog")
            return EpisodeRecord.from_row(row)

    def label_history(self, episode_id: str) -> list[dict]:
        with self._session() as s:
            rows = s.scalars(select(OutcomeLabel).where(OutcomeLabel.episode_id == episode_id)
                             .order_by(OutcomeLabel.labelled_at_ns)).all()
            return [{"outcome": r.outcome, "labeller": r.labeller, "labelled_at_ns": r.labelled_at_ns} for r in rows]

    def episodes(
        self,
        *,
        robot: str | Sequence[str] | None = None,
        task: str | Sequence[str] | None = None,
        outcome: str | Sequence[str] | None = None,
        policy_version: str | Sequence[str] | None = None,
        status: str | Sequence[str] | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
        with_corrections: bool | None = None,
        evaluation: bool | None = None,
        ids: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> list[EpisodeRecord]:
        """Episodes matching every given filter, oldest first. Each filter takes one value or a list."""

        def many(v):
            return [v] if isinstance(v, str) else list(v)

        q = select(Episode)
        if robot is not None:
            q = q.where(Episode.robot_id.in_(many(robot)))
        if task is not None:
            q = q.where(Episode.task_id.in_(many(task)))
        if outcome is not None:
            q = q.where(Episode.outcome.in_([str(Outcome(o)) for o in many(outcome)]))
        if status is not None:
            q = q.where(Episode.status.in_(many(status)))
        if policy_version is not None:
            q = q.where(Episode.id.in_(select(EpisodePolicyVersion.episode_id)
                                       .where(EpisodePolicyVersion.policy_version.in_(many(policy_version)))))
        if since_ns is not None:
            q = q.where(Episode.start_time_ns >= since_ns)
        if until_ns is not None:
            q = q.where(Episode.start_time_ns < until_ns)
        if with_corrections is not None:
            q = q.where(Episode.num_correction_ticks > 0 if with_corrections else Episode.num_correction_ticks == 0)
        if evaluation is not None:
            q = q.where(Episode.evaluation.is_(bool(evaluation)))
        if ids is not None:
            q = q.where(Episode.id.in_(list(ids)))
        q = q.order_by(Episode.start_time_ns, Episode.id)
        if limit is not None:
            q = q.limit(limit)
        with self._session() as s:
            return [EpisodeRecord.from_row(r) for r in s.scalars(q).all()]

    def select_for_training(self, store: EpisodeStore, **filters) -> TrainingSelection:
        """`episodes(**filters)` less the evaluation episodes (held out) and the degenerate ones (too
        short, inconsistent lengths, non-finite values, unreadable: `EpisodeData.defect`), which come
        back in `excluded` with the reason. A stretch marked as a bad correction leaves only its ticks
        out: it comes back in `masked`, with who marked it and why."""
        usable, excluded, masked = [], {}, {}
        records = self.episodes(**filters)
        for r in records:
            if r.evaluation:
                excluded[r.id] = "evaluation episode (held out from training)"
                continue
            if r.num_ticks < MIN_EPISODE_TICKS:  # known from the row: no need to open the episode
                excluded[r.id] = f"{r.num_ticks} tick{'s' if r.num_ticks != 1 else ''} (at least {MIN_EPISODE_TICKS} needed)"
                continue
            try:
                problem = store.open(r.id).defect()
            except StoreError as e:  # the reason travels to API clients: no paths
                problem = "missing from the store" if isinstance(e, KeyError) else f"unreadable ({type(e).__name__}; see `recap data fsck`)"
            if problem:
                excluded[r.id] = problem
                continue
            usable.append(r)
        marks = self.annotations([r.id for r in usable]) if usable else {}
        for eid, anns in marks.items():
            bad = [{"start_tick": a["start_tick"], "end_tick": a["end_tick"],
                    "why": f"bad correction at ticks {a['start_tick']}-{a['end_tick']} marked by {a['author']}: "
                           f"{a['reason']}"} for a in anns if a["kind"] == "bad_correction"]
            if bad:
                masked[eid] = bad
        return TrainingSelection(usable, excluded, masked)

    # -- consistency ----------------------------------------------------------------------

    def reconcile(self, store: EpisodeStore, *, repair: bool = False) -> ReconcileReport:
        """Compare the catalog with the store; with repair, make the catalog match the store."""
        report = ReconcileReport()
        opened = {}
        for eid in store.episode_ids():
            try:
                opened[eid] = store.open(eid)
            except (StoreError, ValueError):  # unreadable: fsck reports it; the catalog must not index it
                continue
        in_store = set(opened)
        with self._session() as s:
            rows = {r.id: (r.checksum, r.outcome, r.outcome_labelled_at_ns) for r in s.scalars(select(Episode)).all()}
        report.removed = sorted(set(rows) - in_store)
        report.added = sorted(in_store - set(rows))
        for eid in sorted(in_store & set(rows)):
            ep = opened[eid]
            if rows[eid] != (ep.checksum, str(ep.info.outcome), ep.info.outcome_labelled_at_ns):
                report.updated.append(eid)
        if repair:
            self.remove(report.removed)
            self.register_many((opened[eid] for eid in report.added + report.updated), authoritative=True)
        return report
