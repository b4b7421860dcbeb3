"""Episodes: list with filters, one episode with its label history, outcome labels (teleoperator),
registration of committed episodes (robots), uploads of demonstrations or corrections (a tar of a
Zarr episode or of a LeRobot v3 dataset), and camera frames for playback.

Uploads: the body is streamed to disk (never whole in memory) and refused past MAX_UPLOAD_BYTES;
the archive's headers are judged before anything is extracted (data/transfer.py), with a 4xx naming
the reason; then an import job on the worker extracts, verifies and adopts it (202 + status URL).

Shipping (a robot's own committed episodes, robot_bridge/shipper.py): `POST /ingest` opens or resumes
a partial upload keyed by episode id and the sha256 of the episode's tar and says where it ends;
`PUT /ingest/<id>/<sha256>?offset=N` appends one chunk whose sha256 is in `X-Chunk-Sha256`;
`POST /ingest/<id>/<sha256>/commit` verifies the whole and adopts and indexes it in the request.
Every step is idempotent (data/transfer.py, IngestSpool); a robot token ships only its robot's episodes."""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path

import simplejpeg
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi import Path as Path_
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from starlette.requests import ClientDisconnect
from python_multipart.exceptions import FormParserError, MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from data.catalog.catalog import EpisodeRecord
from data.store import EPISODE_ID_RE, EpisodeNotFound, StoreError
from data.transfer import (
    ArchiveMalformed,
    ArchivePlan,
    ArchiveTooLarge,
    ChunkRefused,
    EpisodeExists,
    EpisodeRefused,
    IngestBusy,
    IngestSpool,
    IngestState,
    OffsetMismatch,
    UploadRefused,
    ensure_new,
    inspect_archive,
    open_archive,
)
from services import worker
from services.api.context import AppContext, ctx, principal, require
from services.api.schemas import (
    EpisodeOut,
    EpisodeRegister,
    EvaluationFlag,
    IngestCommit,
    IngestOpen,
    IngestOut,
    LabelIn,
    Sha256,
    Text,
    UploadForm,
    UploadJobOut,
)
from services.auth import Principal, Role
from services.worker import import_queue_name

router = APIRouter(prefix="/v1/episodes", tags=["episodes"])
log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 4 << 30
MAX_CHUNK_BYTES = IngestSpool.MAX_CHUNK_BYTES


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
                  evaluation: bool | None = Query(None, description="only evaluation episodes (true) or only others"),
                  _: Principal = Depends(principal), c: AppContext = Depends(ctx)):
    for o in outcome or []:
        if o not in ("success", "failure", "unknown"):
            raise HTTPException(422, f"unknown outcome {o!r}: success, failure or unknown")
    recs = c.catalog.episodes(robot=robot, task=task, outcome=outcome, policy_version=policy_version, status=status,
                              since_ns=since_ns, until_ns=until_ns, evaluation=evaluation)
    return [_out(r) for r in recs[-limit:]]


@router.post("/evaluation", response_model=list[EpisodeOut],
             summary="Flag episodes as evaluation episodes (held out: never selected for training), or unflag them")
def flag_evaluation(body: EvaluationFlag, request: Request, _: Principal = Depends(require("episodes.label")),
                    c: AppContext = Depends(ctx)):
    request.state.audit = {"episodes": len(body.episode_ids), "evaluation": body.evaluation}
    try:
        return [_out(r) for r in c.catalog.set_evaluation(body.episode_ids, body.evaluation)]
    except KeyError as e:
        raise HTTPException(404, f"{e.args[0]}; nothing was flagged") from None


@router.post("/register", response_model=EpisodeOut, summary="Index a committed episode of the shared store")
def register_episode(body: EpisodeRegister, _: Principal = Depends(require("episodes.register")),
                     c: AppContext = Depends(ctx)):
    ep = _open(c, body.episode_id)
    c.catalog.register(ep)
    worker.enqueue_transcode(c.redis, c.settings, [body.episode_id])  # the video tier (data/video.py)
    _look_at_gates(c)
    return _out(c.catalog.get(body.episode_id), ep.cameras)


def _look_at_gates(c: AppContext) -> None:
    """A new episode or label may let a canary gate decide; its thread looks again if this fails."""
    try:
        c.gates.look()
    except Exception:
        log.exception("canary gates: look after an episode change failed")


class _Multipart:
    """Streams a multipart/form-data body: the one `file` part straight to `dest`, small text fields
    into `fields`; no part is ever held whole in memory."""

    MAX_FIELD_BYTES = 1024
    MAX_PARTS = 8

    def __init__(self, boundary: bytes, dest: Path):
        self.dest, self.fields, self.got_file = dest, {}, False
        self._out, self._field = None, None
        self._parts = 0
        self._header, self._hval, self._value = b"", b"", bytearray()
        self._headers: dict[bytes, bytes] = {}
        self.parser = MultipartParser(boundary, {
            "on_part_begin": self._begin, "on_part_data": self._data, "on_part_end": self._end,
            "on_header_field": self._hfield, "on_header_value": self._hvalue, "on_header_end": self._hend,
            "on_headers_finished": self._hdone})

    def _begin(self):
        self._parts += 1
        if self._parts > self.MAX_PARTS:
            raise HTTPException(400, f"more than {self.MAX_PARTS} form parts")
        self._headers, self._value, self._field, self._out = {}, bytearray(), None, None

    def _hfield(self, data, start, end):
        self._header += data[start:end]

    def _hvalue(self, data, start, end):
        self._hval += data[start:end]

    def _hend(self):
        self._headers[self._header.lower()] = self._hval
        self._header, self._hval = b"", b""

    def _hdone(self):
        _, opts = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = opts.get(b"name", b"").decode("latin-1")
        if "filename" in {k.decode("latin-1") for k in opts}:
            if name != "file" or self.got_file:
                raise HTTPException(400, "send exactly one file part, named 'file'")
            self.got_file = True
            self._out = open(self.dest, "wb")
        else:
            self._field = name

    def _data(self, data, start, end):
        if self._out is not None:
            self._out.write(data[start:end])
        else:
            self._value += data[start:end]
            if len(self._value) > self.MAX_FIELD_BYTES:
                raise HTTPException(400, f"form field {self._field[:64]!r} longer than {self.MAX_FIELD_BYTES} bytes")

    def _end(self):
        if self._out is not None:
            self._out.close()
            self._out = None
        elif self._field:
            self.fields[self._field] = self._value.decode("utf-8", "replace")

    def close(self):
        if self._out is not None:
            self._out.close()


async def _receive_upload(request: Request, dest: Path) -> dict[str, str]:
    """Stream the request's multipart body to disk, refusing it (413) once it passes MAX_UPLOAD_BYTES."""
    ctype, opts = parse_options_header(request.headers.get("content-type"))
    if ctype != b"multipart/form-data" or not opts.get(b"boundary"):
        raise HTTPException(415, "send multipart/form-data with the archive as the part named 'file'")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES + (1 << 20):
        raise HTTPException(413, f"upload larger than {MAX_UPLOAD_BYTES} bytes")
    try:
        form = _Multipart(opts[b"boundary"], dest)
    except (FormParserError, ValueError):
        raise HTTPException(400, "malformed multipart boundary") from None
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > MAX_UPLOAD_BYTES + (1 << 20):
                raise HTTPException(413, f"upload larger than {MAX_UPLOAD_BYTES} bytes")
            await run_in_threadpool(form.parser.write, chunk)
        form.parser.finalize()
    except (MultipartParseError, FormParserError):
        raise HTTPException(400, "malformed multipart/form-data body") from None
    finally:
        form.close()
    if not form.got_file:
        raise HTTPException(422, "the form has no part named 'file' holding the archive")
    return form.fields


_REFUSAL_STATUS = {ArchiveMalformed: 400, ArchiveTooLarge: 413, EpisodeExists: 409, OffsetMismatch: 409,
                   IngestBusy: 409, ChunkRefused: 422}


def _refusal(e: UploadRefused) -> HTTPException:
    headers = {"X-Upload-Offset": str(e.offset)} if isinstance(e, OffsetMismatch) else None
    return HTTPException(next((v for k, v in _REFUSAL_STATUS.items() if isinstance(e, k)), 422), str(e), headers)


def _inspect(c: AppContext, archive: Path) -> ArchivePlan:
    with open_archive(archive) as tar:
        plan = inspect_archive(tar, archive.stat().st_size)
    if plan.episode_id:
        ensure_new(c.store, plan.episode_id, c.catalog)
    return plan


@router.post("/upload", response_model=UploadJobOut, status_code=202,
             summary="Upload demonstrations or corrections: a tar of a Zarr episode folder or of a LeRobot v3 dataset",
             description="multipart/form-data: `file` (the tar, plain or compressed), optional `robot_id`, `task_id` "
                         "(LeRobot datasets). The archive's headers are checked at once (4xx with the reason); the "
                         "import runs as a job: poll `status_url` for its progress and the new episode ids.",
             openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                 "type": "object", "required": ["file"], "properties": {
                     "file": {"type": "string", "format": "binary"},
                     "robot_id": {"type": "string", "default": "upload"}, "task_id": {"type": "string"}}}}}}})
async def upload_episodes(request: Request, response: Response, p: Principal = Depends(require("episodes.upload")),
                          c: AppContext = Depends(ctx)):
    job_id = f"upload-{uuid.uuid4().hex[:16]}"
    work_dir = Path(c.settings.uploads_dir) / job_id
    work_dir.mkdir(parents=True)
    queued = False
    try:
        fields = await _receive_upload(request, work_dir / "archive")
        try:
            form = UploadForm(**{k: v for k, v in fields.items() if k in UploadForm.model_fields})
        except ValidationError as e:
            raise HTTPException(422, "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())) from None
        try:
            plan = await run_in_threadpool(_inspect, c, work_dir / "archive")
        except UploadRefused as e:
            raise _refusal(e) from None
        job = Queue(import_queue_name(c.settings), connection=c.redis).enqueue(
            worker.import_upload, job_id, p.name, form.robot_id, form.task_id, job_id=job_id,
            job_timeout=worker.IMPORT_TIMEOUT_S, result_ttl=7 * 24 * 3600, failure_ttl=7 * 24 * 3600,
            meta={"phase": "queued", "progress": 0.0, "uploaded_by": p.name, "format": plan.format},
            description=f"import upload {job_id} ({plan.format}) by {p.name}")
        queued = True
    finally:
        if not queued:
            shutil.rmtree(work_dir, ignore_errors=True)
    response.headers["Location"] = f"/v1/episodes/uploads/{job_id}"
    return _job_out(job)


def _job_out(job: Job) -> dict:
    meta, status = job.get_meta(refresh=False), job.get_status(refresh=False)
    state = {JobStatus.STARTED: "running", JobStatus.FINISHED: "finished"}.get(status, "queued")
    if status in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
        state = "failed"
    if state == "finished" and meta.get("error"):
        state = "refused"
    return {"id": job.id, "status": state, "phase": meta.get("phase", "queued"), "progress": meta.get("progress", 0.0),
            "format": meta.get("format"), "episode_ids": meta.get("episode_ids", []),
            "error": meta.get("error") or ("the import failed in the worker; its log has the details"
                                           if state == "failed" else None),
            "uploaded_by": meta.get("uploaded_by"), "status_url": f"/v1/episodes/uploads/{job.id}"}


@router.get("/uploads/{job_id}", response_model=UploadJobOut, summary="An upload's import: status, progress, episodes")
def upload_status(job_id: str = Path_(pattern=r"^upload-[0-9a-f]{16}$"), _: Principal = Depends(principal),
                  c: AppContext = Depends(ctx)):
    try:
        job = Job.fetch(job_id, connection=c.redis)
    except NoSuchJobError:
        raise HTTPException(404, f"no upload {job_id!r} (finished imports are kept 7 days)") from None
    return _job_out(job)


# -- shipping ------------------------------------------------------------------------------------

def _spool(c: AppContext, p: Principal, episode_id: str) -> IngestSpool:
    if not EPISODE_ID_RE.match(episode_id):
        raise HTTPException(422, f"{episode_id[:140]!r} is not an episode id (<yyyymmdd>T<hhmmss>-<robot>-<6 hex>)")
    if p.role == Role.ROBOT and episode_id[16:-7] != p.robot_id:
        raise HTTPException(403, f"robot {p.robot_id} may ship only its own episodes, not {episode_id}")
    return IngestSpool(Path(c.settings.uploads_dir) / "ingest", c.store, c.catalog)


def _ingest(step, *args, **kw) -> IngestState:
    try:
        return step(*args, **kw)
    except UploadRefused as e:
        raise _refusal(e) from None


@router.post("/ingest", response_model=IngestOut, summary="Open or resume shipping a robot's committed episode",
             description="Answers where the central side's verified partial copy ends (`offset`), or `status: done` "
                         "when the episode is in the store and the catalog already (a second ship is a no-op).")
def ingest_open(body: IngestOpen, p: Principal = Depends(require("episodes.ship")), c: AppContext = Depends(ctx)):
    spool = _spool(c, p, body.episode_id)
    return _ingest(spool.open, body.episode_id, body.sha256, body.size).__dict__


@router.put("/ingest/{episode_id}/{sha256}", response_model=IngestOut, summary="One chunk of a shipped episode",
            description=f"The raw bytes (at most {MAX_CHUNK_BYTES}) from `offset`; `X-Chunk-Sha256`: their sha256. "
                        "A chunk that does not start where the copy ends: 409 with `X-Upload-Offset`; one whose "
                        "sha256 differs: 422, nothing kept.",
            openapi_extra={"requestBody": {"required": True, "content": {"application/octet-stream": {
                "schema": {"type": "string", "format": "binary"}}}}})
async def ingest_chunk(request: Request, episode_id: str, sha256: Sha256, offset: int = Query(ge=0, le=2**63 - 1),
                       chunk_sha256: Sha256 = Header(alias="X-Chunk-Sha256"),
                       p: Principal = Depends(require("episodes.ship")), c: AppContext = Depends(ctx)):
    spool = _spool(c, p, episode_id)
    try:
        data = await request.body()
    except ClientDisconnect:  # the robot went away mid-chunk (killed, link down): nothing to keep
        raise HTTPException(400, "the chunk was not received whole") from None
    return (await run_in_threadpool(_ingest, spool.append, episode_id, sha256, offset, data, chunk_sha256)).__dict__


@router.post("/ingest/{episode_id}/{sha256}/commit", response_model=IngestOut,
             summary="Verify a fully sent episode, adopt it into the store and index it (idempotent)")
def ingest_commit(episode_id: str, sha256: Sha256, body: IngestCommit | None = None,
                  p: Principal = Depends(require("episodes.ship")), c: AppContext = Depends(ctx)):
    spool = _spool(c, p, episode_id)
    out = _ingest(spool.commit, episode_id, sha256, uploaded_by=p.name, outcome=body.outcome if body else None)
    worker.enqueue_transcode(c.redis, c.settings, [episode_id])  # a repeat is a no-op for the job
    _look_at_gates(c)  # a shipped episode counts for a canary like a registered one
    return out.__dict__


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
    _look_at_gates(c)
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
