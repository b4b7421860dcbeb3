"""The audit log (admin): every mutating request, who made it, and its answer."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from sqlalchemy import select

from services.api.context import AppContext, ctx, require
from services.api.schemas import AuditOut, Text
from services.auth import Principal
from services.control.models import AuditEntry

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get("", response_model=list[AuditOut], summary="Audit log, newest first")
def audit_log(limit: int = Query(200, ge=1, le=100_000), actor: Text | None = Query(None),
              _: Principal = Depends(require("audit.read")), c: AppContext = Depends(ctx)):
    with c.db.session() as s:
        q = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
        if actor:
            q = q.where(AuditEntry.actor == actor)
        return [{k: getattr(a, k) for k in AuditOut.model_fields} for a in s.scalars(q).all()]
