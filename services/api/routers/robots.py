"""Robots: register (operator), list and status (any role), heartbeat (the robot itself)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException
from sqlalchemy import select

from services.api.context import AppContext, ctx, now_ns, principal, require
from services.api.publish import publish_serving_state
from services.api.schemas import Heartbeat, Id, RobotCreate, RobotOut
from services.auth import Principal
from services.control.models import Robot
from services.registry import assignments

router = APIRouter(prefix="/v1/robots", tags=["robots"])


def _out(r: Robot, assigned: dict) -> dict:
    return {"id": r.id, "group": r.group, "registered_at_ns": r.registered_at_ns, "last_seen_ns": r.last_seen_ns,
            "reported_version": r.reported_version, "assigned_version": assigned.get(r.id)}


@router.post("", response_model=RobotOut, status_code=201, summary="Register a robot (or move it to a group)")
def register_robot(body: RobotCreate, _: Principal = Depends(require("robots.register")), c: AppContext = Depends(ctx)):
    with c.db.session() as s:
        r = s.get(Robot, body.id)
        if r is None:
            r = Robot(id=body.id, group=body.group, registered_at_ns=now_ns(), info={})
            s.add(r)
        else:
            r.group = body.group
        s.flush()
        out = _out(r, assignments(s))
    publish_serving_state(c)
    return out


@router.get("", response_model=list[RobotOut], summary="The fleet: each robot, its version, when last seen")
def list_robots(_: Principal = Depends(principal), c: AppContext = Depends(ctx)):
    with c.db.session() as s:
        assigned = assignments(s)
        return [_out(r, assigned) for r in s.scalars(select(Robot).order_by(Robot.id)).all()]


@router.get("/{robot_id}", response_model=RobotOut)
def get_robot(robot_id: Id, _: Principal = Depends(principal), c: AppContext = Depends(ctx)):
    with c.db.session() as s:
        r = s.get(Robot, robot_id)
        if r is None:
            raise HTTPException(404, f"no robot {robot_id!r}")
        return _out(r, assignments(s))


@router.post("/{robot_id}/heartbeat", response_model=RobotOut, summary="A robot reports it is alive and what it runs")
def heartbeat(robot_id: Id, body: Heartbeat, p: Principal = Depends(require("robots.heartbeat")),
              c: AppContext = Depends(ctx)):
    if p.robot_id is not None and p.robot_id != robot_id:
        raise HTTPException(403, f"this token speaks for robot {p.robot_id}, not {robot_id}")
    with c.db.session() as s:
        r = s.get(Robot, robot_id)
        if r is None:
            raise HTTPException(404, f"no robot {robot_id!r}; an operator registers it first")
        r.last_seen_ns = now_ns()
        r.reported_version = body.version
        return _out(r, assignments(s))
