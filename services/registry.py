"""PolicyRegistry: policy versions with lineage and metrics, and the deployments that point robots
at them. A version is registered only from a complete, verified artifact, at most once per training
run (a unique column, so a retried worker cannot register twice).

Deploy and rollback take the serving sequence's lock first (services/control/serving_sequence.py),
so they read the history they build on with no other serving change in flight; `serving_state`
reads under the same lock and carries the number it was read at."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from data.artifact_manifest import manifest_digest, verify_artifact
from services.canary import GateError, open_gate
from services.control import serving_sequence
from services.control.models import ApiToken, Deployment, PolicyVersion, Robot
from training.recap_config import BETA_MAX


class RegistryError(ValueError):
    """A request the registry refuses; the message says why."""


def register_version(s: Session, artifact_dir: str | Path, *, created_by: str, run_id: str | None = None,
                     parent_version: str | None = None) -> PolicyVersion:
    """Verify the artifact and add it as the next version `v<N>`; idempotent per run."""
    if run_id is not None:
        existing = s.scalar(select(PolicyVersion).where(PolicyVersion.run_id == run_id))
        if existing is not None:
            return existing
    d = Path(artifact_dir).resolve()
    manifest = verify_artifact(d)  # ArtifactError names the bad file
    if manifest.get("kind") != "policy":
        raise RegistryError(f"{d} is a {manifest.get('kind')} artifact, not a policy")
    try:
        config = json.loads((d / "config.json").read_text())
    except ValueError as e:
        raise RegistryError(f"{d}: config.json is not JSON ({e})") from e
    if not isinstance(config, dict):
        raise RegistryError(f"{d}: config.json is not a JSON object")
    policy_type = config.get("type", "native_flow")
    if not isinstance(policy_type, str):
        raise RegistryError(f"{d}: config.json's type is not a string")
    n = (s.scalar(select(func.count()).select_from(PolicyVersion)) or 0) + 1
    lineage = manifest.get("lineage", {})
    v = PolicyVersion(id=f"v{n}", run_id=run_id, artifact_dir=str(d),
                      manifest_sha256=manifest_digest(d),
                      policy_type=policy_type,
                      parent_version=parent_version or lineage.get("parent_version"), lineage=lineage,
                      metrics=manifest.get("metrics", {}), created_at_ns=time.time_ns(), created_by=created_by)
    s.add(v)
    try:
        s.flush()
    except IntegrityError as e:  # a concurrent registration took the number or the run
        raise RegistryError("version registration raced with another, retry") from e
    return v


def deploy(s: Session, version_id: str, target_kind: str, target: str, *, stage: str, created_by: str,
           note: str = "", beta: float | None = None, gate: dict | None = None) -> Deployment:
    """`beta`: the guidance strength to serve the version with on this target; None: the artifact's
    (the value its run was evaluated with). `gate` ({"min_episodes", "threshold"}): a canary on one
    robot that the canary gate (services/canary.py) widens or rolls back, opened in the same
    transaction."""
    serving_sequence.bump(s)
    baseline = fleet_baseline(s, target) if gate is not None and target_kind == "robot" else None
    if s.get(PolicyVersion, version_id) is None:
        raise RegistryError(f"unknown policy version {version_id!r}")
    if beta is not None and not (math.isfinite(beta) and 0.0 <= beta <= BETA_MAX):
        raise RegistryError(f"beta: {beta} is not a guidance strength in [0, {BETA_MAX:g}]")
    if target_kind == "fleet":
        target = "*"
    elif target_kind == "robot" and s.get(Robot, target) is None:
        raise RegistryError(f"unknown robot {target!r}; register it first")
    elif target_kind == "group" and s.scalar(select(func.count()).select_from(Robot).where(Robot.group == target)) == 0:
        raise RegistryError(f"no robot in group {target!r}")
    d = Deployment(target_kind=target_kind, target=target, version_id=version_id, stage=stage,
                   created_at_ns=time.time_ns(), created_by=created_by, note=note,
                   beta=None if beta is None else float(beta))
    s.add(d)
    s.flush()
    if gate is not None:
        try:
            open_gate(s, d, min_episodes=gate["min_episodes"], threshold=gate["threshold"],
                               baseline=baseline, created_by=created_by)
        except GateError as e:
            raise RegistryError(str(e)) from e
    return d


def fleet_baseline(s: Session, canary_robot: str) -> str | None:
    """What the rest of the fleet runs (the version most of the other robots are assigned; None when
    no other robot runs one): the canary gate compares with it."""
    counts: dict[str, int] = {}
    for robot, v in assignments(s).items():
        if robot != canary_robot and v is not None:
            counts[v] = counts.get(v, 0) + 1
    return max(sorted(counts), key=counts.get) if counts else None


def deciding_deployment(s: Session, robot_id: str) -> Deployment | None:
    """The deployment that decides what `robot_id` runs now."""
    return _deciding(s).get(robot_id)


def _served(version_id: str, beta: float | None) -> str:
    return version_id if beta is None else f"{version_id} at beta {beta:g}"


def rollback(s: Session, target_kind: str, target: str, *, created_by: str) -> Deployment:
    """Deploy, to the same target, what it ran before its newest deployment (the version and its β
    override, none meaning the artifact's): for a canary robot that is usually what its group or the
    fleet was running, not an earlier canary. A change of β alone is rolled back like a version."""
    serving_sequence.bump(s)
    target = "*" if target_kind == "fleet" else target
    group = None
    if target_kind == "robot":
        robot = s.get(Robot, target)
        group = robot.group if robot else None
    deps = s.scalars(select(Deployment).order_by(Deployment.id.desc())).all()
    own = [d for d in deps if d.target_kind == target_kind and d.target == target]
    if not own:
        raise RegistryError(f"{target_kind} {target}: nothing deployed to it, nothing to roll back")
    newest = own[0]
    current = (newest.version_id, newest.beta)

    def applies(d: Deployment) -> bool:  # would this deployment decide the target's version?
        return ((d.target_kind == target_kind and d.target == target) or d.target_kind == "fleet"
                or (d.target_kind == "group" and target_kind == "robot" and d.target == group))

    previous = next((d for d in deps if d.id < newest.id and applies(d) and (d.version_id, d.beta) != current), None)
    if previous is None:
        raise RegistryError(f"{target_kind} {target}: no earlier version to roll back to")
    return deploy(s, previous.version_id, target_kind, target, stage="rollback", created_by=created_by,
                  note=f"rollback from {_served(*current)}", beta=previous.beta)


def _deciding(s: Session) -> dict[str, Deployment | None]:
    """robot id -> the deployment that decides what it runs: the newest matching it (robot, its
    group, or the fleet)."""
    deps = s.scalars(select(Deployment).order_by(Deployment.id)).all()
    out = {}
    for r in s.scalars(select(Robot)).all():
        match = [d for d in deps if (d.target_kind == "robot" and d.target == r.id)
                 or (d.target_kind == "group" and d.target == r.group) or d.target_kind == "fleet"]
        out[r.id] = match[-1] if match else None
    return out


def assignments(s: Session) -> dict[str, str | None]:
    """robot id -> the version it should run."""
    return {r: d.version_id if d else None for r, d in _deciding(s).items()}


def serving_state(s: Session) -> dict:
    """Everything an inference server needs, as one JSON document: which version each robot runs and
    at which guidance β (`betas`, `fleet_beta`: the deciding deployment's override, None for the
    artifact's), where the artifacts are (and their manifest digests), which robot tokens exist, and
    the serving sequence number (and epoch) it was read at. Published after every change; the servers swap to
    it as a whole. Call it in a transaction of its own: it holds the sequence lock to the end."""
    epoch, seq = serving_sequence.read_locked(s)
    deciding = _deciding(s)
    assigned = {r: d.version_id if d else None for r, d in deciding.items()}
    fleet = s.scalar(select(Deployment).where(Deployment.target_kind == "fleet").order_by(Deployment.id.desc()))
    fleet_version = fleet.version_id if fleet else None  # robots the registry does not know yet
    versions = {}
    for vid in sorted({v for v in [*assigned.values(), fleet_version] if v}):
        v = s.get(PolicyVersion, vid)
        versions[vid] = {"artifact_dir": v.artifact_dir, "manifest_sha256": v.manifest_sha256,
                         "policy_type": v.policy_type}
    tokens = {t.token_sha256: t.robot_id for t in s.scalars(select(ApiToken).where(
        ApiToken.role == "robot", ApiToken.revoked_at_ns.is_(None))).all()}
    return {"robots": assigned, "fleet_version": fleet_version,
            "betas": {r: d.beta if d else None for r, d in deciding.items()},
            "fleet_beta": fleet.beta if fleet else None,
            "versions": versions, "robot_tokens": tokens, "seq": seq, "epoch": epoch, "at_ns": time.time_ns()}
