"""Control-plane tables (SQLAlchemy 2 ORM). JSON columns hold documents the API returns as they are
(lineage, metrics, run specs); everything queried or joined on is a real column."""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[str] = mapped_column(String(32))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)  # the token itself is never stored
    robot_id: Mapped[str | None] = mapped_column(String(128), nullable=True)  # robot tokens only
    created_at_ns: Mapped[int] = mapped_column(BigInteger)
    created_by: Mapped[str] = mapped_column(String(128))
    revoked_at_ns: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class AuditEntry(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at_ns: Mapped[int] = mapped_column(BigInteger, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(256))  # "POST /v1/deployments"
    status: Mapped[int] = mapped_column(Integer)
    detail: Mapped[dict] = mapped_column(JSON, default=dict)


class Robot(Base):
    __tablename__ = "robots"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    group: Mapped[str] = mapped_column(String(128), default="default", index=True)
    registered_at_ns: Mapped[int] = mapped_column(BigInteger)
    last_seen_ns: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    reported_version: Mapped[str | None] = mapped_column(String(128), nullable=True)  # what the bridge says it runs
    info: Mapped[dict] = mapped_column(JSON, default=dict)


class PolicyVersion(Base):
    __tablename__ = "policy_versions"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    run_id: Mapped[str | None] = mapped_column(String(128), unique=True, nullable=True)  # one version per run
    artifact_dir: Mapped[str] = mapped_column(Text)
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    policy_type: Mapped[str] = mapped_column(String(64))
    parent_version: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lineage: Mapped[dict] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at_ns: Mapped[int] = mapped_column(BigInteger)
    created_by: Mapped[str] = mapped_column(String(128))


class Deployment(Base):
    """Point a target at a version. The newest deployment matching a robot decides what it runs;
    rollback is a new deployment of an earlier version (and β), so history only grows."""

    __tablename__ = "deployments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    target_kind: Mapped[str] = mapped_column(String(16))  # robot | group | fleet
    target: Mapped[str] = mapped_column(String(128))  # robot id, group name, or "*"
    version_id: Mapped[str] = mapped_column(ForeignKey("policy_versions.id"))
    stage: Mapped[str] = mapped_column(String(16))  # canary | widen | rollback | deploy
    created_at_ns: Mapped[int] = mapped_column(BigInteger, index=True)
    created_by: Mapped[str] = mapped_column(String(128))
    note: Mapped[str] = mapped_column(Text, default="")
    # classifier-free guidance β the version is served with; None: the artifact's (what its run was evaluated with)
    beta: Mapped[float | None] = mapped_column(Float, nullable=True)


class ServingSequence(Base):
    """One row: the number of the newest serving state. Every transaction that changes what the
    inference servers serve (deployments, robots and their groups, robot tokens) increments it
    before it commits (services/registry.py); the row lock serialises those transactions, so a
    state read at number n holds exactly the changes numbered <= n. `epoch` is drawn once when the
    database is created: a state from another database is never mistaken for a newer one."""

    __tablename__ = "serving_sequence"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # always 1
    seq: Mapped[int] = mapped_column(BigInteger)
    epoch: Mapped[str] = mapped_column(String(32))


class TrainingRun(Base):
    __tablename__ = "training_runs"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    spec: Mapped[dict] = mapped_column(JSON)  # selection, method, recipe, seed, parent version
    status: Mapped[str] = mapped_column(String(16), index=True)  # queued | running | finished | failed | cancelled
    phase: Mapped[str] = mapped_column(String(32), default="")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at_ns: Mapped[int] = mapped_column(BigInteger)
    started_at_ns: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    finished_at_ns: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_by: Mapped[str] = mapped_column(String(128))
    version_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)


class CanaryGate(Base):
    """A canary deployment under a gate (services/canary.py): open until the canary robot has run
    `min_episodes` episodes of `version_id` since `started_at_ns`, then compared with what the rest
    of the fleet ran over the same window (`baseline_version`) and widened to the fleet (passed) or
    rolled back (failed) in the transaction that records the decision. `figures` holds what the rule
    saw, at the decision or at the newest look while open; `reason` says it in words."""

    __tablename__ = "canary_gates"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"), unique=True)  # the canary
    version_id: Mapped[str] = mapped_column(String(128))
    robot_id: Mapped[str] = mapped_column(String(128))
    baseline_version: Mapped[str | None] = mapped_column(String(128), nullable=True)
    min_episodes: Mapped[int] = mapped_column(Integer)
    threshold: Mapped[float] = mapped_column(Float)
    started_at_ns: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), index=True)  # open | passed | failed | superseded
    reason: Mapped[str] = mapped_column(Text, default="")
    figures: Mapped[dict] = mapped_column(JSON, default=dict)
    decided_at_ns: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    decision_deployment_id: Mapped[int | None] = mapped_column(ForeignKey("deployments.id"), nullable=True)
    created_by: Mapped[str] = mapped_column(String(128))
