"""Catalog tables (SQLAlchemy 2). Times are integer nanoseconds since the epoch (UTC), as in the store."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Robot(Base):
    __tablename__ = "robots"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    first_seen_ns: Mapped[int] = mapped_column(BigInteger)


class Task(Base):
    __tablename__ = "tasks"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    instruction: Mapped[str] = mapped_column(Text, default="")


class Episode(Base):
    __tablename__ = "episodes"
    id: Mapped[str] = mapped_column(String(160), primary_key=True)
    robot_id: Mapped[str] = mapped_column(ForeignKey("robots.id"), index=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id"), index=True)
    instruction: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(String(16), index=True)
    outcome_labeller: Mapped[str | None] = mapped_column(String(128), nullable=True)
    outcome_labelled_at_ns: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    num_ticks: Mapped[int] = mapped_column(Integer)
    num_policy_ticks: Mapped[int] = mapped_column(Integer, default=0)
    num_correction_ticks: Mapped[int] = mapped_column(Integer, default=0)
    num_demonstration_ticks: Mapped[int] = mapped_column(Integer, default=0)
    num_hold_ticks: Mapped[int] = mapped_column(Integer, default=0)
    num_takeovers: Mapped[int] = mapped_column(Integer, default=0)  # data.effort.count_takeovers
    # recorded to evaluate a policy (held out): never selected for training (Catalog.select_for_training)
    evaluation: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    fps: Mapped[float] = mapped_column(Float)
    start_time_ns: Mapped[int] = mapped_column(BigInteger, index=True)
    end_time_ns: Mapped[int] = mapped_column(BigInteger)
    location: Mapped[str] = mapped_column(Text)
    checksum: Mapped[str] = mapped_column(String(64))
    schema_version: Mapped[int] = mapped_column(Integer)
    registered_at_ns: Mapped[int] = mapped_column(BigInteger)

    policy_versions: Mapped[list["EpisodePolicyVersion"]] = relationship(
        back_populates="episode", cascade="all, delete-orphan", lazy="selectin")
    labels: Mapped[list["OutcomeLabel"]] = relationship(
        back_populates="episode", cascade="all, delete-orphan", order_by="OutcomeLabel.labelled_at_ns")
    annotations: Mapped[list["EpisodeAnnotation"]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="EpisodeAnnotation.id")


class EpisodePolicyVersion(Base):
    """Every policy version that produced at least one tick of the episode (hot swaps happen)."""

    __tablename__ = "episode_policy_versions"
    episode_id: Mapped[str] = mapped_column(ForeignKey("episodes.id", ondelete="CASCADE"), primary_key=True)
    policy_version: Mapped[str] = mapped_column(String(128), primary_key=True, index=True)
    episode: Mapped[Episode] = relationship(back_populates="policy_versions")


class OutcomeLabel(Base):
    """The history of outcome labels; the newest is the episode's outcome."""

    __tablename__ = "outcome_labels"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    episode_id: Mapped[str] = mapped_column(ForeignKey("episodes.id", ondelete="CASCADE"), index=True)
    outcome: Mapped[str] = mapped_column(String(16))
    labeller: Mapped[str] = mapped_column(String(128))
    labelled_at_ns: Mapped[int] = mapped_column(BigInteger)
    episode: Mapped[Episode] = relationship(back_populates="labels")

    __table_args__ = (Index("ix_outcome_labels_unique", "episode_id", "labelled_at_ns", "labeller", unique=True),)


class EpisodeAnnotation(Base):
    """A stretch of ticks marked, with why: `bad_correction` (a reviewer's: a teleoperator's correction
    that should not be learnt from: training leaves these ticks out, this row saying why); `mistake`
    (from the tick where the policy went wrong, `start_tick`, to the takeover that followed, `end_tick`:
    recorded by the teleoperator station, author `station:<robot>`, or marked by a reviewer)."""

    __tablename__ = "episode_annotations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    episode_id: Mapped[str] = mapped_column(ForeignKey("episodes.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    start_tick: Mapped[int] = mapped_column(Integer)
    end_tick: Mapped[int] = mapped_column(Integer)  # inclusive
    reason: Mapped[str] = mapped_column(Text)
    author: Mapped[str] = mapped_column(String(128))
    created_at_ns: Mapped[int] = mapped_column(BigInteger)
