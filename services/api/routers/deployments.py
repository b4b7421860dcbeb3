"""Deployments (operator): point a robot, a group or the fleet at a version (canary, then widen),
roll back, history, and what each robot should run now. Every change is published to the
inference servers over Redis."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Query
from sqlalchemy import select

from services.api.context import AppContext, ctx, principal, require
from services.api.publish import publish_serving_state
from services.api.schemas import DeploymentCreate, DeploymentOut, RollbackIn
from services.auth import Principal
from services.control.models import Deployment
from services.registry import RegistryError, assignments, deploy, rollback

router = APIRouter(prefix="/v1/deployments", tags=["deployments"])


def _out(d: Deployment) -> dict:
    return {k: getattr(d, k) for k in DeploymentOut.model_fields}


@router.post("", response_model=DeploymentOut, status_code=201, summary="Deploy a version to a target")
def create_deployment(body: DeploymentCreate, p: Principal = Depends(require("deployments.create")),
                      c: AppContext = Depends(ctx)):
    try:
        with c.db.session() as s:
            out = _out(deploy(s, body.version, body.target_kind, body.target, stage=body.stage, created_by=p.name,
                              note=body.note))
    except RegistryError as e:
        raise HTTPException(422, str(e)) from e
    publish_serving_state(c)
    return out


@router.post("/rollback", response_model=DeploymentOut, status_code=201,
             summary="Deploy, to a target, the version it ran before")
def rollback_deployment(body: RollbackIn, p: Principal = Depends(require("deployments.rollback")),
                        c: AppContext = Depends(ctx)):
    try:
        with c.db.session() as s:
            out = _out(rollback(s, body.target_kind, body.target, created_by=p.name))
    except RegistryError as e:
        raise HTTPException(422, str(e)) from e
    publish_serving_state(c)
    return out


@router.get("", response_model=list[DeploymentOut], summary="Deployment history, newest first")
def history(limit: int = Query(200, ge=1, le=10_000), _: Principal = Depends(principal), c: AppContext = Depends(ctx)):
    with c.db.session() as s:
        return [_out(d) for d in s.scalars(select(Deployment).order_by(Deployment.id.desc()).limit(limit)).all()]


@router.get("/current", summary="robot -> the version it should run now")
def current(_: Principal = Depends(principal), c: AppContext = Depends(ctx)) -> dict[str, str | None]:
    with c.db.session() as s:
        return assignments(s)
