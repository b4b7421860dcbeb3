"""The training worker: consumes training jobs from Redis (RQ), runs the `training/` pipeline,
streams phase and progress into the control-plane database, and registers the policy version
once the artifact is complete and verified.

Crash behaviour: a job whose worker dies (SIGKILL, power loss) is found abandoned by the next
worker's registry maintenance once its heartbeat is `RECAP_WORKER_ABANDON_S` old (default 70 s) and
retried (RQ `Retry`); the training run resumes from its last checkpoint (training/runs.py), and the
version registration is unique per run, so the retry registers exactly once.

    recap serve worker            # one per GPU / CPU box; RECAP_* environment as the API's

It also runs upload imports (`import_upload`), from a queue of their own that it serves first: the
API stores the archive under `uploads/<job id>/` and has checked its headers; the job checks them
again, extracts, verifies, adopts and indexes, reporting phase and progress in the job's meta, and
removes the archive whatever the outcome. A refused upload finishes with its reason in the meta.

Where the training runs: `RECAP_TRAIN_DEVICE` (cpu, cuda) and `RECAP_TRAIN_PROCS`: with N > 1 each
job runs data-parallel in N processes under torchrun (one per GPU; gloo on CPUs), rank 0 streaming
progress; the result is read back from the run directory and registered by the worker as usual.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from data.artifact_manifest import finite_json
from data.catalog import Catalog
from data.store import EpisodeStore
from services.control import ControlDB
from services.control.models import TrainingRun
from services.registry import register_version
from services.settings import ServiceSettings

log = logging.getLogger(__name__)

JOB_TIMEOUT_S = 24 * 3600
RETRIES = 3
# A dead worker's job is declared abandoned when its execution heartbeat (sent every monitoring
# interval) has not been renewed for `abandon_after_s()` (70 s: RQ's 10 s interval + its 60 s margin);
# idle workers look for such jobs every maintenance interval, and wake from their blocking wait every
# worker TTL - 15 s to do so.
ABANDON_AFTER_S = 70


IMPORT_TIMEOUT_S = 6 * 3600
TRANSCODE_TIMEOUT_S = 6 * 3600


class RunCancelled(Exception):
    pass


def import_queue_name(settings: ServiceSettings) -> str:
    return f"{settings.queue}-imports"


def media_queue_name(settings: ServiceSettings) -> str:
    return f"{settings.queue}-media"


def transcode(episode_ids: list[str] | None = None) -> dict:
    """The RQ job of the video tier (data/video.py): transcode the given committed episodes (None:
    every one the retention policy selects, RECAP_JPEG_KEEP_DAYS / RECAP_TRANSCODE_AFTER_S), drop
    JPEG tiers past retention, and re-index each changed episode. Killed midway, the episode stays
    readable; the retry (or the next pass) starts it over after cleaning up what it left."""
    from data.video import RetentionPolicy, transcode_pass

    settings = ServiceSettings.from_env()
    store = EpisodeStore(settings.store_root)
    catalog = Catalog.for_store(store, settings.catalog_url)
    done: dict = {"transcoded": [], "jpeg_dropped": [], "busy": [], "skipped": {}}

    def on_episode(r) -> None:
        if r.transcoded or r.jpeg_dropped:
            catalog.register(store.open(r.episode_id))  # its manifest checksum changed
        for key, flag in (("transcoded", r.transcoded), ("jpeg_dropped", r.jpeg_dropped), ("busy", r.busy)):
            if flag:
                done[key].append(r.episode_id)
        if r.skipped:
            done["skipped"][r.episode_id] = r.skipped

    try:
        transcode_pass(store, RetentionPolicy.from_env(), episode_ids=episode_ids, on_episode=on_episode)
    finally:
        catalog.close()
    return done


def enqueue_transcode(conn, settings: ServiceSettings, episode_ids: list[str] | None = None):
    """Queue a transcode job (best effort: the next pass catches what a failed enqueue missed)."""
    from rq import Queue

    try:
        return Queue(media_queue_name(settings), connection=conn).enqueue(
            transcode, episode_ids, job_timeout=TRANSCODE_TIMEOUT_S, retry=_retry(),
            result_ttl=24 * 3600, failure_ttl=7 * 24 * 3600,
            description=f"transcode {len(episode_ids) if episode_ids is not None else 'all'} episodes")
    except Exception as e:  # noqa: BLE001 - registration must not fail because Redis is away
        log.warning("could not queue a transcode job: %s", e)
        return None


def _retry():
    from rq import Retry

    return Retry(max=RETRIES, interval=[30, 120, 600])


def import_upload(job_id: str, uploaded_by: str, robot_id: str, task_id: str | None) -> dict:
    """The RQ import job of an upload stored under `uploads/<job_id>/archive`: returns
    {"episode_ids", "format", "error"}; a refusal is a finished job whose `error` says why."""
    import shutil

    from rq import get_current_job

    from data.transfer import UploadRefused, adopt_episode, ensure_new, extract_archive, inspect_archive, open_archive

    job = get_current_job()
    settings = ServiceSettings.from_env()
    work_dir = Path(settings.uploads_dir) / job_id
    store = EpisodeStore(settings.store_root)
    catalog = Catalog.for_store(store, settings.catalog_url)
    last = [0.0]

    def report(phase: str, fraction: float, **more) -> None:
        now = time.monotonic()
        if job is None or (now - last[0] < 0.5 and fraction < 1.0 and not more):
            return
        last[0] = now
        job.meta.update(phase=phase, progress=round(fraction, 4), **more)
        job.save_meta()

    result: dict = {"episode_ids": [], "format": None, "error": None}
    try:
        archive = work_dir / "archive"
        report("checking", 0.0)
        with open_archive(archive) as tar:
            plan = inspect_archive(tar, archive.stat().st_size)
            result["format"] = plan.format
            if plan.episode_id:
                ensure_new(store, plan.episode_id, catalog)
            root = extract_archive(tar, plan, work_dir / "extracted",
                                   lambda done, total: report("extracting", 0.6 * done / max(total, 1)))
        archive.unlink()
        report("adopting", 0.6)
        at_ns = time.time_ns()
        if plan.format == "zarr":
            ids = [adopt_episode(store, root, uploaded_by=uploaded_by, at_ns=at_ns)]
        else:
            from data.lerobot_io import import_lerobot

            try:
                ids = import_lerobot(root, store, robot_id=robot_id, task_id=task_id, labeller=uploaded_by,
                                     progress=lambda i, n: report("adopting", 0.6 + 0.35 * i / max(n, 1)))
            except Exception as e:  # a malformed dataset is the uploader's error, named
                msg = str(e).replace(str(root), "the dataset").replace(str(work_dir), "the upload")[:300]
                raise UploadRefused(f"LeRobot dataset refused: {type(e).__name__}: {msg}") from None
        report("indexing", 0.95)
        catalog.register_many(store.open(eid) for eid in ids)
        if job is not None:
            enqueue_transcode(job.connection, settings, ids)
        result["episode_ids"] = ids
        report("done", 1.0, episode_ids=ids, format=plan.format)
    except UploadRefused as e:
        msg = str(e)
        for path, name in ((work_dir.resolve(), "the upload"), (work_dir, "the upload"), (store.root, "the store")):
            msg = msg.replace(str(path), name)  # the uploader is told why, not where things live here
        result["error"] = msg
        report("refused", 1.0, error=msg, format=result["format"])
        log.info("upload %s refused: %s", job_id, e)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
        catalog.close()
    return result


def train_device() -> str:
    return os.environ.get("RECAP_TRAIN_DEVICE", "cpu")


def train_procs() -> int:
    return max(1, int(os.environ.get("RECAP_TRAIN_PROCS", "1")))


def abandon_after_s() -> int:
    """`RECAP_WORKER_ABANDON_S`: seconds without a heartbeat after which a worker's job counts as
    abandoned (the worker died) and another worker retries it; shorter: a quicker failover, but a
    worker starved of CPU for that long loses its job to a retry."""
    return max(8, int(os.environ.get("RECAP_WORKER_ABANDON_S", ABANDON_AFTER_S)))


def _worker_class():
    """RQ's worker with the heartbeat timing derived from `abandon_after_s()`: RQ renews a running
    job's heartbeat every monitoring interval with a fixed 60 s margin; here the margin is the rest of
    the abandon time, and idle workers look for abandoned jobs about as often as heartbeats come."""
    from rq import Worker

    abandon = abandon_after_s()
    interval = min(10, abandon // 4)

    class TrainingWorker(Worker):
        def get_heartbeat_ttl(self, job, working_time: float = 0.0) -> int:
            left = job.timeout - working_time if job.timeout and job.timeout > 0 else interval
            return int(min(left, interval)) + abandon - interval

    return TrainingWorker, dict(maintenance_interval=interval, job_monitoring_interval=interval,
                                worker_ttl=15 + min(15, abandon // 4))


def spec_for(run: TrainingRun):
    from training.methods import Method
    from training.recap import RecapConfig
    from training.runs import RunSpec

    sp, recipe = run.spec, run.spec.get("recipe", {})
    return RunSpec(run_id=run.id, method=Method(sp["method"]), selection=sp.get("selection", {}),
                   first_fit=sp.get("first_fit", False), recap=RecapConfig(**recipe.get("recap", {})),
                   value=recipe.get("value", {}), policy=recipe.get("policy", {}),
                   task_max_len=recipe.get("task_max_len", {}), cameras=recipe.get("cameras", []),
                   parent_version=sp.get("parent_version"), seed=sp.get("seed", 0), device=train_device())


class _Progress:
    """Writes (phase, fraction) to the run's row at most every `every_s`; raises when cancelled."""

    def __init__(self, db: ControlDB, run_id: str, every_s: float = 1.0, critic: bool = False):
        self.db, self.run_id, self.every_s, self.last = db, run_id, every_s, 0.0
        # each phase's share of the run's time, roughly; a chunk critic (value-guided selection) comes last
        self.weights = {"value": (0.0, 0.4), "policy": (0.4, 0.45), "critic": (0.85, 0.15)} if critic else \
            {"value": (0.0, 0.4), "policy": (0.4, 0.6)}

    def __call__(self, phase: str, fraction: float) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s and fraction < 1.0:
            return
        self.last = now
        lo, span = self.weights.get(phase, (0.0, 1.0))
        with self.db.session() as s:
            run = s.get(TrainingRun, self.run_id)
            run.phase, run.progress = phase, round(lo + span * fraction, 4)
            cancelled = run.cancel_requested
        if cancelled:
            raise RunCancelled(self.run_id)


def train(run_id: str) -> str | None:
    """The RQ job: returns the registered version id (None when cancelled, or when the data leaves
    nothing to train on: the run fails with a message naming the episodes, and is not retried)."""
    from training.runs import run_training

    settings = ServiceSettings.from_env()
    db = ControlDB(settings.control_db_url)
    store = EpisodeStore(settings.store_root)
    catalog = Catalog.for_store(store, settings.catalog_url)
    run_dir = Path(settings.runs_dir) / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "worker.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        with db.session() as s:
            run = s.get(TrainingRun, run_id)
            if run is None:
                raise ValueError(f"no training run {run_id}")
            if run.status in ("finished", "cancelled"):
                log.info("run %s is %s already", run_id, run.status)
                return run.version_id
            run.status, run.attempts, run.started_at_ns, run.phase = "running", run.attempts + 1, time.time_ns(), "data"
            spec = spec_for(run)
            log.info("training run %s, attempt %d", run_id, run.attempts)
        try:
            if train_procs() > 1:
                result = _run_under_torchrun(run_id, train_procs(), db)
            else:
                result = run_training(store, catalog, spec, settings.runs_dir, progress=False,
                                      on_progress=_Progress(db, run_id, critic=spec.recap.select_chunks > 1))
        except RunCancelled:
            with db.session() as s:
                run = s.get(TrainingRun, run_id)
                run.status, run.finished_at_ns = "cancelled", time.time_ns()
            log.info("run %s cancelled", run_id)
            return None
        except Exception as e:
            from training.runs import TrainingDataError

            with db.session() as s:
                run = s.get(TrainingRun, run_id)
                run.status, run.finished_at_ns = "failed", time.time_ns()
                run.error = str(e) if isinstance(e, TrainingDataError) else f"{type(e).__name__}: {e}"
            if isinstance(e, TrainingDataError):  # the data decides: a retry would fail the same way
                log.error("run %s stopped: %s", run_id, e)
                return None
            log.exception("run %s failed", run_id)
            raise
        with db.session() as s:  # one transaction: the version and the run's final state
            v = register_version(s, result.policy_dir, created_by=f"run:{run_id}", run_id=run_id,
                                 parent_version=spec.parent_version)
            run = s.get(TrainingRun, run_id)
            run.status, run.phase, run.progress, run.finished_at_ns = "finished", "done", 1.0, time.time_ns()
            run.version_id, run.metrics, run.error = v.id, finite_json(result.metrics), None  # NaN: null (JSON)
            vid = v.id
        log.info("run %s registered policy version %s", run_id, vid)
        return vid
    finally:
        root.removeHandler(handler)
        handler.close()
        db.close()
        catalog.close()


def _run_under_torchrun(run_id: str, procs: int, db: ControlDB):
    """The run in `procs` data-parallel processes (torchrun --standalone on this machine)."""
    from training.artifacts import load_artifact
    from training.runs import RunResult

    settings = ServiceSettings.from_env()
    run_dir = Path(settings.runs_dir) / run_id
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
           "-m", "services.worker", run_id]
    log.info("run %s: %d processes under torchrun on %s", run_id, procs, train_device())
    with open(run_dir / "ranks.log", "ab") as out:
        code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT)
    if code != 0:
        with db.session() as s:
            if s.get(TrainingRun, run_id).cancel_requested:
                raise RunCancelled(run_id)
        tail = (run_dir / "ranks.log").read_text(errors="replace").splitlines()[-20:]
        raise RuntimeError(f"torchrun exited with {code}:\n" + "\n".join(tail))
    manifest = load_artifact(run_dir / "policy")[0]
    return RunResult(run_dir, run_dir / "policy", manifest, json.loads((run_dir / "done.json").read_text()))


def _rank_main(run_id: str) -> None:
    """One torchrun rank of a run: rank 0 streams progress (and sees a cancel), all train."""
    from training import distributed
    from training.runs import run_training

    settings = ServiceSettings.from_env()
    db = ControlDB(settings.control_db_url)
    store = EpisodeStore(settings.store_root)
    catalog = Catalog.for_store(store, settings.catalog_url)
    with db.session() as s:
        spec = spec_for(s.get(TrainingRun, run_id))
    distributed.init(spec.device)
    main = distributed.is_main()
    run_training(store, catalog, spec, settings.runs_dir, progress=False,
                 on_progress=_Progress(db, run_id, critic=spec.recap.select_chunks > 1) if main else None)


def work(settings: ServiceSettings, *, burst: bool = False, name: str | None = None) -> None:
    """Run a worker on the upload-import, training and transcode queues (in that order) until
    stopped (SIGTERM: finish the current job's step)."""
    import redis
    from rq import Queue

    import training.runs  # noqa: F401  (import torch once, before forking work horses)

    conn = redis.Redis.from_url(settings.redis_url)
    queues = [Queue(import_queue_name(settings), connection=conn), Queue(settings.queue, connection=conn),
              Queue(media_queue_name(settings), connection=conn)]
    worker_class, timing = _worker_class()
    w = worker_class(queues, connection=conn, name=name, **timing)
    w.work(burst=burst, with_scheduler=True)


if __name__ == "__main__":  # a torchrun rank: python -m services.worker RUN_ID
    from data.logs import setup_logging

    setup_logging()
    _rank_main(sys.argv[1])
