"""Episodes: list with filters, one episode with its label history, outcome labels (teleoperator),
registration of committed episodes (robots), uploads of demonstrations or corrections (a tar of a
Zarr episode or of a LeRobot v3 dataset), and camera frames for playback."""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from pathlib import Path

import simplejpeg
from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Response, UploadFile

from data.catalog.catalog import EpisodeRecord
from data.store import EpisodeNotFound, StoreError
from data.transfer import adopt_episode
from services.api.context import AppContext, ctx, principal, require
from services.api.schemas import EpisodeOut, EpisodeRegister, LabelIn, Text, UploadOut
from services.auth import Principal

router = APIRouter(prefix="/v1/episodes", tags=["episodes"])

MAX_UPLOAD_BYTES = 4 << 30


def _out(r: EpisodeRecord, cameras: list[str] | None = None) -> dict:
    return {**{k: getattr(r, k) for k in EpisodeOut.model_fields if hasattr(r, k)},
            "correction_rate": r.correction_rate, "cameras": cameras or []}


def _open(c: AppContext, episode_id: str):
    try:
        return c.store.open(episode_id)
    except (EpisodeNotFound, StoreError, ValueError) as e:
        raise HTTPException(404, f"no committed episode {episode_id!r}: {e}") from e


@router.get("", response_model=list[EpisodeOut], summary="Episodes matching every given filter")
def list_episodes(robot: list[Text] | None = Query(None), task: list[Text] | None = Query(None),
                  outcome: list[Text] | None = Query(None), policy_version: list[Text] | None = Query(None),
                  status: list[Text] | None = Query(None), since_ns: int | None = Query(None, ge=0, le=2**63 - 1),
                  until_ns: int | None = Query(None, ge=0, le=2**63 - 1), limit: int = Query(500, ge=1, le=100_000),
                  _: Principal = Depends(principal), c: AppContext = Depends(ctx)):
    for o in outcome or []:
        if o not in ("success", "failure", "unknown"):
            raise HTTPException(422, f"unknown outcome {o!r}: success, failure or unknown")
    recs = c.catalog.episodes(robot=robot, task=task, outcome=outcome, policy_version=policy_version, status=status,
                              since_ns=since_ns, until_ns=until_ns)
    return [_out(r) for r in recs[-limit:]]


@router.post("/register", response_model=EpisodeOut, summary="Index a committed episode of the shared store")
def register_episode(body: EpisodeRegister, _: Principal = Depends(require("episodes.register")),
                     c: AppContext = Depends(ctx)):
    ep = _open(c, body.episode_id)
    c.catalog.register(ep)
    return _out(c.catalog.get(body.episode_id), ep.cameras)


@router.post("/upload", response_model=UploadOut, status_code=201,
             summary="Upload demonstrations or corrections: a tar of a Zarr episode or of a LeRobot v3 dataset")
def upload_episodes(file: UploadFile = File(...), robot_id: str = Form("upload", min_length=1, max_length=128,
                                                                        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"),
                    task_id: str | None = Form(None, max_length=128),
                    _: Principal = Depends(require("episodes.upload")), c: AppContext = Depends(ctx)):
    c.settings.uploads_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=c.settings.uploads_dir) as tmp:
        archive = Path(tmp) / "upload.tar"
        with open(archive, "wb") as f:
            shutil.copyfileobj(file.file, f, 1 << 20)
        if archive.stat().st_size > MAX_UPLOAD_BYTES:
            raise HTTPException(413, f"upload larger than {MAX_UPLOAD_BYTES} bytes")
        root = Path(tmp) / "x"
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(root, filter="data")  # no absolute paths, links out, devices
        except (tarfile.TarError, OSError) as e:
            raise HTTPException(400, f"not a readable tar archive: {e}") from e
        top = [p for p in root.iterdir()] if root.exists() else []
        base = top[0] if len(top) == 1 and top[0].is_dir() else root
        if (base / "manifest.json").exists() and (base / "zarr.json").exists():
            try:
                ids = [adopt_episode(c.store, base)]
            except StoreError as e:
                raise HTTPException(422, str(e)) from e
            fmt = "zarr"
        elif (base / "meta" / "info.json").exists():
            from data.lerobot_io import import_lerobot

            try:
                ids = import_lerobot(base, c.store, robot_id=robot_id, task_id=task_id)
            except Exception as e:  # a malformed dataset is the uploader's error, named
                raise HTTPException(422, f"LeRobot dataset refused: {type(e).__name__}: {e}") from e
            fmt = "lerobot"
        else:
            raise HTTPException(422, "the archive holds neither a Zarr episode (manifest.json, zarr.json) "
                                     "nor a LeRobot v3 dataset (meta/info.json)")
    for eid in ids:
        c.catalog.register(c.store.open(eid))
    return {"episode_ids": ids, "format": fmt}


@router.get("/{episode_id}", response_model=EpisodeOut)
def get_episode(episode_id: str, _: Principal = Depends(principal), c: AppContext = Depends(ctx)):
    ep = _open(c, episode_id)
    try:
        rec = c.catalog.get(episode_id)
    except KeyError:
        c.catalog.register(ep)
        rec = c.catalog.get(episode_id)
    return _out(rec, ep.cameras)


@router.post("/{episode_id}/label", response_model=EpisodeOut, summary="Set an episode's outcome")
def label_episode(episode_id: str, body: LabelIn, p: Principal = Depends(require("episodes.label")),
                  c: AppContext = Depends(ctx)):
    ep = _open(c, episode_id)
    rec = c.catalog.label(c.store, episode_id, body.outcome, labeller=p.name)
    return _out(rec, ep.cameras)


@router.get("/{episode_id}/frames/{camera}/{tick}", summary="One camera frame as JPEG (playback)",
            response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
def frame(episode_id: str, camera: str, tick: int, _: Principal = Depends(principal), c: AppContext = Depends(ctx)):
    ep = _open(c, episode_id)
    if camera not in ep.cameras:
        raise HTTPException(404, f"episode {episode_id} has no camera {camera!r} (has {ep.cameras})")
    if not 0 <= tick < len(ep):
        raise HTTPException(404, f"tick {tick} outside 0..{len(ep) - 1}")
    img = ep.image(camera, tick)
    if img.ndim == 2:
        img = img[..., None]
    colorspace = "GRAY" if img.shape[-1] == 1 else "RGB"
    return Response(simplejpeg.encode_jpeg(img, quality=85, colorspace=colorspace), media_type="image/jpeg")
