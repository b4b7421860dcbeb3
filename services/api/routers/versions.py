"""Policy versions: the registry with lineage and metrics; researchers may register an artifact
trained elsewhere (verified before it is accepted)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException
from sqlalchemy import select

from data.artifact_manifest import ArtifactError
from services.api.context import AppContext, ctx, principal, require
from services.api.schemas import Id, VersionCreate, VersionOut
from services.auth import Principal
from services.control.models import PolicyVersion
from services.registry import RegistryError, register_version

router = APIRouter(prefix="/v1/versions", tags=["policy versions"])


def _out(v: PolicyVersion) -> dict:
    return {k: getattr(v, k) for k in VersionOut.model_fields}


@router.get("", response_model=list[VersionOut])
def list_versions(_: Principal = Depends(principal), c: AppContext = Depends(ctx)):
    with c.db.session() as s:
        return [_out(v) for v in s.scalars(select(PolicyVersion).order_by(PolicyVersion.created_at_ns)).all()]


@router.get("/{version_id}", response_model=VersionOut)
def get_version(version_id: Id, _: Principal = Depends(principal), c: AppContext = Depends(ctx)):
    with c.db.session() as s:
        v = s.get(PolicyVersion, version_id)
        if v is None:
            raise HTTPException(404, f"no policy version {version_id!r}")
        return _out(v)


@router.post("", response_model=VersionOut, status_code=201, summary="Register a policy artifact directory")
def create_version(body: VersionCreate, p: Principal = Depends(require("versions.register")),
                   c: AppContext = Depends(ctx)):
    try:
        with c.db.session() as s:
            if body.parent_version and s.get(PolicyVersion, body.parent_version) is None:
                raise HTTPException(422, f"unknown parent version {body.parent_version!r}")
            return _out(register_version(s, body.artifact_dir, created_by=p.name, parent_version=body.parent_version))
    except (ArtifactError, RegistryError, OSError) as e:
        raise HTTPException(422, f"artifact refused: {e}") from e
