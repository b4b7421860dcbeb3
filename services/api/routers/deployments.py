"""Deployments (operator): point a robot, a group or the fleet at a version (canary, then widen),
optionally with its own guidance β (default: the artifact's) and, for a canary, a gate that widens
or rolls it back by a stated rule (services/canary.py); roll back, history (with the gates'
decisions), and what each robot should run now. Every change is numbered by the serving
sequence in its own transaction and published to the inference servers over Redis after it commits
(services/api/publish.py)."""

from __future__ import annotations

import redis
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from sqlalchemy import select

from services.api.context import AppContext, ctx, principal, require
from services.api.publish import publish_serving_state
from services.api.schemas import DeploymentCreate, DeploymentOut, GateOut, RollbackIn, ServingStateOut
from services.auth import Principal
from services.canary import gate_out
from services.control.models import CanaryGate, Deployment
from services.registry import RegistryError, assignments, deploy, rollback, serving_state
from services.serving_channel import read_stamp

router = APIRouter(prefix="/v1/deployments", tags=["deployments"])


def _out(d: Deployment, gate_id: int | None = None) -> dict:
    return {**{k: getattr(d, k) for k in DeploymentOut.model_fields if k != "gate_id"}, "gate_id": gate_id}


def _gates_by_deployment(s) -> dict[int, int]:
    return dict(s.execute(select(CanaryGate.deployment_id, CanaryGate.id)).all())


@router.post("", response_model=DeploymentOut, status_code=201, summary="Deploy a version to a target")
def create_deployment(body: DeploymentCreate, request: Request, p: Principal = Depends(require("deployments.create")),
                      c: AppContext = Depends(ctx)):
    request.state.audit = {"version": body.version, "beta": body.beta,  # the audit row names what was asked
                           "gate": body.gate.model_dump() if body.gate else None}
    if body.gate is not None and body.target_kind != "robot":
        raise HTTPException(422, "gate: a gated canary targets one robot (target_kind robot)")
    try:
        with c.db.session() as s:
            d = deploy(s, body.version, body.target_kind, body.target, stage=body.stage, created_by=p.name,
                       note=body.note, beta=body.beta, gate=body.gate.model_dump() if body.gate else None)
            out = _out(d, _gates_by_deployment(s).get(d.id))
    except RegistryError as e:
        raise HTTPException(422, str(e)) from e
    publish_serving_state(c)
    return out


@router.post("/rollback", response_model=DeploymentOut, status_code=201,
             summary="Deploy, to a target, the version (and β) it ran before")
def rollback_deployment(body: RollbackIn, request: Request, p: Principal = Depends(require("deployments.rollback")),
                        c: AppContext = Depends(ctx)):
    try:
        with c.db.session() as s:
            out = _out(rollback(s, body.target_kind, body.target, created_by=p.name))
        request.state.audit = {"version": out["version_id"], "beta": out["beta"]}
    except RegistryError as e:
        raise HTTPException(422, str(e)) from e
    publish_serving_state(c)
    return out


@router.get("", response_model=list[DeploymentOut], summary="Deployment history, newest first")
def history(limit: int = Query(200, ge=1, le=10_000), _: Principal = Depends(principal), c: AppContext = Depends(ctx)):
    with c.db.session() as s:
        gates = _gates_by_deployment(s)
        return [_out(d, gates.get(d.id))
                for d in s.scalars(select(Deployment).order_by(Deployment.id.desc()).limit(limit)).all()]


@router.get("/gates", response_model=list[GateOut], summary="Canary gates, newest first: status, decision and figures")
def gates(limit: int = Query(200, ge=1, le=10_000), _: Principal = Depends(principal), c: AppContext = Depends(ctx)):
    with c.db.session() as s:
        return [gate_out(g) for g in s.scalars(select(CanaryGate).order_by(CanaryGate.id.desc()).limit(limit)).all()]


@router.get("/current", summary="robot -> the version it should run now")
def current(_: Principal = Depends(principal), c: AppContext = Depends(ctx)) -> dict[str, str | None]:
    with c.db.session() as s:
        return assignments(s)


@router.get("/serving", response_model=ServingStateOut,
            summary="The serving state as the database holds it, and what Redis has published")
def serving(_: Principal = Depends(principal), c: AppContext = Depends(ctx)):
    """Compare `seq` with an inference server's `GET /v1/serving`; `published_seq` behind `seq`
    means a publish is pending (the API retries every second)."""
    with c.db.session() as s:
        state = serving_state(s)
    try:
        stamp = read_stamp(c.redis)
    except redis.RedisError:
        stamp = None
    return {"seq": state["seq"], "robots": state["robots"], "fleet_version": state["fleet_version"],
            "betas": state["betas"], "fleet_beta": state["fleet_beta"], "versions": sorted(state["versions"]),
            "published_seq": stamp[1] if stamp and stamp[0] == state["epoch"] else None}
