"""API tokens (admin): create (the token is shown once), list, revoke."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException
from sqlalchemy import select

from services.api.context import AppContext, ctx, now_ns, require
from services.api.publish import publish_serving_state
from services.api.schemas import Id, TokenCreate, TokenCreated, TokenOut
from services.auth import Principal, Role, new_token, token_digest
from services.control.models import ApiToken

router = APIRouter(prefix="/v1/tokens", tags=["tokens"])


def _out(t: ApiToken) -> dict:
    return {"name": t.name, "role": t.role, "robot_id": t.robot_id, "created_at_ns": t.created_at_ns,
            "created_by": t.created_by, "revoked": t.revoked_at_ns is not None}


@router.post("", response_model=TokenCreated, status_code=201, summary="Create a token for a role")
def create_token(body: TokenCreate, p: Principal = Depends(require("tokens.create")), c: AppContext = Depends(ctx)):
    if (body.role == Role.ROBOT) != (body.robot_id is not None):
        raise HTTPException(422, "robot_id is required for robot tokens and only for them")
    token = new_token()
    with c.db.session() as s:
        if s.scalar(select(ApiToken).where(ApiToken.name == body.name)) is not None:
            raise HTTPException(409, f"a token named {body.name!r} exists")
        t = ApiToken(name=body.name, role=str(body.role), token_sha256=token_digest(token), robot_id=body.robot_id,
                     created_at_ns=now_ns(), created_by=p.name)
        s.add(t)
        s.flush()
        out = _out(t)
    if body.role == Role.ROBOT:
        publish_serving_state(c)
    return {**out, "token": token}


@router.get("", response_model=list[TokenOut], summary="List tokens (never their secrets)")
def list_tokens(_: Principal = Depends(require("tokens.create")), c: AppContext = Depends(ctx)):
    with c.db.session() as s:
        return [_out(t) for t in s.scalars(select(ApiToken).order_by(ApiToken.id)).all()]


@router.delete("/{name}", response_model=TokenOut, summary="Revoke a token")
def revoke_token(name: Id, _: Principal = Depends(require("tokens.revoke")), c: AppContext = Depends(ctx)):
    with c.db.session() as s:
        t = s.scalar(select(ApiToken).where(ApiToken.name == name))
        if t is None:
            raise HTTPException(404, f"no token named {name!r}")
        if t.revoked_at_ns is None:
            t.revoked_at_ns = now_ns()
        out, robot = _out(t), t.role == Role.ROBOT
    if robot:
        publish_serving_state(c)
    return out
