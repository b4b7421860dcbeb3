"""`recap data ...`: inspect, check, label, import and export recorded episodes."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from data.catalog import Catalog
from data.cli_errors import UserError, user_errors
from data.home import default_store
from data.schema import ActionSource, Outcome, SchemaError
from data.store import EpisodeStore, StoreError

user_errors(StoreError, SchemaError)

app = typer.Typer(help="The episode store and catalog: list, check (fsck), label, import/export LeRobot v3.",
                  no_args_is_help=True)
# Piped or logged output gets a wide table instead of rich's 80-column default.
console = Console() if sys.stdout.isatty() else Console(width=220)

StoreOpt = typer.Option(None, "--store", "-s", envvar="RECAP_STORE", show_default=False,
                        help="Episode store directory [default: $RECAP_HOME/store; RECAP_HOME defaults to "
                             "./recap_home].")
CatalogOpt = typer.Option(None, "--catalog", envvar="RECAP_CATALOG_URL",
                          help="SQLAlchemy URL of the catalog [default: SQLite in the store].")


def open_store(store: Optional[Path], catalog: Optional[str], create: bool = False) -> tuple[EpisodeStore, Catalog]:
    """The store (`--store`, RECAP_STORE, or $RECAP_HOME/store) and its catalog."""
    import sqlalchemy.exc

    # A catalog URL that does not parse, names no driver, or cannot be opened is the caller's to fix.
    user_errors(sqlalchemy.exc.ArgumentError, sqlalchemy.exc.OperationalError)
    st = EpisodeStore(store or default_store(), create=create)
    return st, Catalog.for_store(st, catalog)


def _image_size(value: str) -> tuple[int, int]:
    """`HxW` -> (H, W), both positive."""
    try:
        h, w = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not HxW (e.g. 480x640)") from None
    if h <= 0 or w <= 0:
        raise typer.BadParameter(f"{value!r}: height and width must be positive")
    return h, w


def _date_ns(value: Optional[str], name: str) -> Optional[int]:
    if value is None:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not an ISO date (e.g. 2026-11-23 or 2026-11-23T15:00)", param_hint=name) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1e9)


def _fmt_time(ns: Optional[int]) -> str:
    return "-" if ns is None else datetime.fromtimestamp(ns / 1e9, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _select(cat: Catalog, robot, task, outcome, policy_version, status, since, until, limit):
    return cat.episodes(robot=robot or None, task=task or None, outcome=outcome or None,
                        policy_version=policy_version or None, status=status or None,
                        since_ns=_date_ns(since, "--since"), until_ns=_date_ns(until, "--until"), limit=limit)


@app.command("ls")
def ls_cmd(
    store: Optional[Path] = StoreOpt,
    catalog: Optional[str] = CatalogOpt,
    robot: list[str] = typer.Option([], "--robot", help="Only these robots (repeatable)."),
    task: list[str] = typer.Option([], "--task", help="Only these tasks (repeatable)."),
    outcome: list[Outcome] = typer.Option([], "--outcome", help="success / failure / unknown (repeatable)."),
    policy_version: list[str] = typer.Option([], "--policy-version", help="Episodes in which this version acted."),
    status: list[str] = typer.Option([], "--status", help="complete / incomplete."),
    since: Optional[str] = typer.Option(None, help="Started at or after this ISO date/time (UTC)."),
    until: Optional[str] = typer.Option(None, help="Started before this ISO date/time (UTC)."),
    limit: Optional[int] = typer.Option(None, min=0, help="At most this many."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines instead of a table."),
) -> None:
    """List committed episodes from the catalog, filtered."""
    _, cat = open_store(store, catalog)
    rows = _select(cat, robot, task, outcome, policy_version, status, since, until, limit)
    if as_json:
        for r in rows:
            print(json.dumps(r.__dict__))
        return
    table = Table(title=f"{len(rows)} episodes")
    for col in ("episode", "robot", "task", "outcome", "by", "status", "ticks", "corrections", "versions", "started (UTC)"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.id, r.robot_id, r.task_id, r.outcome, r.outcome_labeller or "-", r.status, str(r.num_ticks),
                      f"{r.correction_rate:.0%}", ",".join(r.policy_versions) or "-", _fmt_time(r.start_time_ns))
    console.print(table)


@app.command("show")
def show_cmd(episode_id: str = typer.Argument(..., help="Episode id (see `recap data ls`)."), store: Optional[Path] = StoreOpt, catalog: Optional[str] = CatalogOpt) -> None:
    """Show one episode: attributes, action sources, label history."""
    st, cat = open_store(store, catalog)
    ep = st.open(episode_id)
    info = ep.info
    src = ep.action_source
    console.print(f"[bold]{info.episode_id}[/bold]  robot={info.robot_id} task={info.task_id} status={info.status}")
    console.print(f"instruction: {info.instruction!r}")
    console.print(f"ticks={len(ep)} fps={info.fps:g} duration={info.duration_s:.2f}s start={_fmt_time(info.start_time_ns)}")
    console.print("sources: " + ", ".join(f"{s.name.lower()}={int((src == s).sum())}" for s in ActionSource))
    console.print(f"cameras: {', '.join(f'{k} {v.height}x{v.width}' for k, v in info.features.cameras.items()) or '-'}")
    console.print(f"policy versions: {', '.join(info.policy_versions) or '-'}")
    console.print(f"outcome: {info.outcome} (by {info.outcome_labeller or '-'} at {_fmt_time(info.outcome_labelled_at_ns)})")
    for lab in cat.label_history(episode_id):
        console.print(f"  label {lab['outcome']} by {lab['labeller']} at {_fmt_time(lab['labelled_at_ns'])}")
    console.print(f"checksum: {ep.checksum}")


@app.command("label")
def label_cmd(
    episode_id: str = typer.Argument(..., help="Episode id (see `recap data ls`)."),
    outcome: Outcome = typer.Argument(..., help="success / failure / unknown"),
    by: str = typer.Option(..., "--by", help="Who labels it (kept in the label history)."),
    store: Optional[Path] = StoreOpt,
    catalog: Optional[str] = CatalogOpt,
) -> None:
    """Set an episode's outcome; earlier labels stay in its history."""
    st, cat = open_store(store, catalog)
    rec = cat.label(st, episode_id, outcome, by)
    console.print(f"{rec.id}: outcome {rec.outcome} (by {rec.outcome_labeller})")


@app.command("fsck")
def fsck_cmd(
    store: Optional[Path] = StoreOpt,
    catalog: Optional[str] = CatalogOpt,
    repair: bool = typer.Option(False, "--repair", help="Recover crashed episodes, quarantine corrupt ones, fix the catalog."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    quick: bool = typer.Option(False, "--quick", help="Only recover crashed episodes; do not re-hash committed ones."),
) -> None:
    """Check every episode against its checksums and the catalog against the store; optionally repair.

    Exit code 0 when the store is clean (or was repaired), 1 when problems remain."""
    from data.fsck import fsck

    st, cat = open_store(store, catalog)
    report = fsck(st, repair=repair, verify=not quick)
    rec = cat.reconcile(st, repair=repair)
    if as_json:
        print(json.dumps({"store": report.to_dict(), "catalog": rec.__dict__ | {"consistent": rec.consistent}}, indent=1))
    else:
        console.print(f"checked {report.checked} episodes: {len(report.ok)} ok, {len(report.corrupt)} corrupt, "
                      f"{len(report.crashed)} left by a crashed writer, {len(report.live)} being written now")
        for eid, why in report.corrupt.items():
            console.print(f"  [red]corrupt[/red] {eid}: {why}")
        for eid, why in report.crashed.items():
            console.print(f"  [yellow]crashed[/yellow] {eid}: {why}")
        for eid, why in report.transcode.items():
            console.print(f"  [yellow]interrupted transcode[/yellow] {eid}: {why}")
        for eid, keys in report.stray.items():
            console.print(f"  [yellow]stray files[/yellow] {eid}: {', '.join(keys[:5])}" + (" ..." if len(keys) > 5 else ""))
        for a in report.actions:
            console.print(f"  [green]repaired[/green] {a}")
        if report.partial_files_removed:
            console.print(f"  removed {report.partial_files_removed} temporary files of dead writers")
        console.print(f"catalog: {len(rec.added)} missing, {len(rec.updated)} stale, {len(rec.removed)} without data"
                      + (" -> fixed" if repair and not rec.consistent else ""))
        if not repair and not (report.clean and rec.consistent):
            console.print("run with --repair to fix")
    remaining = not repair and not (report.clean and rec.consistent)
    raise typer.Exit(1 if remaining else 0)


@app.command("transcode")
def transcode_cmd(
    episode_ids: list[str] = typer.Argument(None, help="Only these episodes [default: every committed episode the policy selects]."),
    store: Optional[Path] = StoreOpt,
    catalog: Optional[str] = CatalogOpt,
    keep_jpeg_days: Optional[float] = typer.Option(None, min=0.0, help="Keep the JPEG tier of episodes committed less than this many days ago [default: $RECAP_JPEG_KEEP_DAYS or 7]."),
    after_s: Optional[float] = typer.Option(None, "--after-s", min=0.0, help="Transcode episodes once committed this long ago [default: $RECAP_TRANSCODE_AFTER_S or 0]."),
    gop: int = typer.Option(1, min=1, max=600, help="Keyframe interval (1: every frame decodes alone, best for random-access training reads)."),
    crf: int = typer.Option(28, min=0, max=51, help="H.264 quality (lower is better and larger)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON line per episode handled."),
) -> None:
    """Move committed episodes' cameras to the video tier (H.264) and drop JPEG tiers beyond the retention policy."""
    import math

    from data.video import RetentionPolicy, VideoSettings, transcode_pass

    try:
        env = RetentionPolicy.from_env()
    except ValueError as e:
        raise UserError(str(e)) from None
    policy = RetentionPolicy(env.keep_jpeg_days if keep_jpeg_days is None else keep_jpeg_days,
                             env.transcode_after_s if after_s is None else after_s)
    if not all(math.isfinite(v) for v in (policy.keep_jpeg_days, policy.transcode_after_s)):
        raise UserError("--keep-jpeg-days and --after-s must be finite")
    st, cat = open_store(store, catalog)
    for eid in episode_ids or []:
        st.open(eid)  # exists and is committed, else one clear line

    def done(r) -> None:
        if r.transcoded or r.jpeg_dropped:
            cat.register(st.open(r.episode_id))  # the episode's checksum changed
        if as_json:
            print(json.dumps(r.to_dict()))
        elif r.busy:
            console.print(f"{r.episode_id}: busy (being written, transcoded or repaired); next pass")
        else:
            what = ([f"video for {', '.join(r.transcoded)}"] if r.transcoded else []) + (["JPEG tier dropped"] if r.jpeg_dropped else [])
            console.print(f"{r.episode_id}: {'; '.join(what) or 'nothing to do'}"
                          + "".join(f"; {c} kept as JPEG: {why}" for c, why in r.skipped.items()))

    results = transcode_pass(st, policy, settings=VideoSettings(crf=crf, gop=gop), episode_ids=episode_ids or None,
                             on_episode=done)
    if not as_json:
        console.print(f"{len(results)} episodes handled (JPEG kept {policy.keep_jpeg_days:g} days and for pinned episodes)")


@app.command("pin")
def pin_cmd(
    episode_id: str = typer.Argument(..., help="Episode id (see `recap data ls`)."),
    by: str = typer.Option(..., "--by", help="Who pins it."),
    reason: str = typer.Option("", "--reason", help="Why (kept with the pin)."),
    unpin: bool = typer.Option(False, "--unpin", help="Remove the pin instead."),
    store: Optional[Path] = StoreOpt,
) -> None:
    """Keep an episode's JPEG tier whatever its age (or, with --unpin, let the retention policy drop it)."""
    from data import video

    st = EpisodeStore(store or default_store(), create=False)
    if unpin:
        console.print(f"{episode_id}: " + ("unpinned" if video.unpin(st, episode_id) else "was not pinned"))
    else:
        video.pin(st, episode_id, by, reason)
        console.print(f"{episode_id}: pinned (JPEG tier kept)")


@app.command("stats")
def stats_cmd(
    out: Path = typer.Argument(..., help="Where to write the statistics (JSON)."),
    store: Optional[Path] = StoreOpt,
    catalog: Optional[str] = CatalogOpt,
    task: list[str] = typer.Option([], "--task", help="Only these tasks (repeatable)."),
    robot: list[str] = typer.Option([], "--robot", help="Only these robots (repeatable)."),
    outcome: list[Outcome] = typer.Option([], "--outcome", help="success / failure / unknown (repeatable)."),
) -> None:
    """Normalisation statistics (mean/std/min/max/quantiles) of state, action and images."""
    from data.stats import compute_stats

    st, cat = open_store(store, catalog)
    rows = _select(cat, robot, task, outcome, [], [], None, None, None)
    if not rows:
        raise UserError("no episode matches the selection")
    stats = compute_stats(st.open(r.id) for r in rows)
    stats.save(out)
    console.print(f"statistics of {len(rows)} episodes written to {out}")


@app.command("export")
def export_cmd(
    out: Path = typer.Argument(..., help="Directory for the LeRobot v3 dataset (must not exist or be empty)."),
    store: Optional[Path] = StoreOpt,
    catalog: Optional[str] = CatalogOpt,
    robot: list[str] = typer.Option([], "--robot", help="Only these robots (repeatable)."),
    task: list[str] = typer.Option([], "--task", help="Only these tasks (repeatable)."),
    outcome: list[Outcome] = typer.Option([], "--outcome", help="success / failure / unknown (repeatable)."),
    policy_version: list[str] = typer.Option([], "--policy-version", help="Episodes in which this version acted."),
    status: list[str] = typer.Option([], "--status", help="complete / incomplete."),
    since: Optional[str] = typer.Option(None, help="Started at or after this ISO date/time (UTC)."),
    until: Optional[str] = typer.Option(None, help="Started before this ISO date/time (UTC)."),
    limit: Optional[int] = typer.Option(None, min=0, help="At most this many."),
    repo_id: str = typer.Option("local/recap-export", help="repo_id recorded in the dataset's metadata."),
    videos: bool = typer.Option(True, "--videos/--images", help="Cameras as MP4 video (LeRobot default) or PNG frames."),
) -> None:
    """Export a selection of episodes as a LeRobot v3 dataset (offline), with action source columns."""
    from tqdm import tqdm

    from data.lerobot_io import ExportVerificationError, export_lerobot

    st, cat = open_store(store, catalog)
    rows = _select(cat, robot, task, outcome, policy_version, status, since, until, limit)
    if not rows:
        raise UserError("no episode matches the selection")
    bar = tqdm(total=len(rows), unit="episode", desc="export")
    try:
        export_lerobot(st, [r.id for r in rows], out, repo_id=repo_id, use_videos=videos,
                       progress=lambda i, n: bar.update(1))
    except ExportVerificationError as e:
        bar.close()
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    bar.close()
    console.print(f"exported {len(rows)} episodes to {out}")


@app.command("import")
def import_cmd(
    source: Path = typer.Argument(..., exists=True, file_okay=False, help="Root directory of a local LeRobot v3 dataset."),
    robot: str = typer.Option(..., "--robot", help="Robot id to record the demonstrations under."),
    task: Optional[str] = typer.Option(None, "--task", help="Task id (default: derived from the task text)."),
    by: str = typer.Option("lerobot-import", "--by", help="Labeller recorded for the success labels."),
    store: Optional[Path] = StoreOpt,
    catalog: Optional[str] = CatalogOpt,
) -> None:
    """Import a LeRobot v3 dataset as demonstrations (outcome success)."""
    from tqdm import tqdm

    from data.lerobot_io import import_lerobot

    if not (source / "meta" / "info.json").is_file():
        # LeRobot would look for it on the hub instead
        raise typer.BadParameter(f"{source} is not a LeRobot v3 dataset (no meta/info.json)", param_hint="SOURCE")
    st, cat = open_store(store, catalog, create=True)
    bar = tqdm(unit="episode", desc="import")
    ids = import_lerobot(source, st, robot_id=robot, task_id=task, labeller=by, keep_labels=True,
                         progress=lambda i, n: (setattr(bar, "total", n), bar.update(1)))
    bar.close()
    cat.register_many(st.open(e) for e in ids)
    console.print(f"imported {len(ids)} episodes from {source}")


@app.command("record-synthetic")
def record_synthetic_cmd(
    store: Optional[Path] = StoreOpt,
    catalog: Optional[str] = CatalogOpt,
    episodes: int = typer.Option(3, min=1, help="How many episodes."),
    ticks: int = typer.Option(300, min=1, help="Ticks per episode."),
    cameras: int = typer.Option(3, min=0, help="Cameras per tick."),
    size: str = typer.Option("480x640", help="Camera image size HxW.", callback=_image_size),
    fps: float = typer.Option(30.0, min=0.0, help="Control rate; 0 records as fast as possible."),
    robot: str = typer.Option("synthetic-robot", help="Robot id."),
    flush_ticks: int = typer.Option(10, min=1, help="Ticks per flushed chunk."),
    task: str = typer.Option("synthetic", help="Task id."),
    log_commits: Optional[Path] = typer.Option(None, help="Append one JSON line per committed episode (id, checksum)."),
    no_catalog: bool = typer.Option(False, "--no-catalog", help="Do not register episodes in the catalog."),
) -> None:
    """Record synthetic camera/state episodes: check a store's speed and crash safety on this machine."""
    from data.synthetic import SyntheticFrames, features

    st, cat = open_store(store, catalog, create=True)
    if no_catalog:
        cat.close()
        cat = None
    h, w = size
    feats = features(cameras, h, w)
    frames = SyntheticFrames(feats)
    period = 1.0 / fps if fps > 0 else 0.0
    stop_on_signals()
    try:
        _record_loop(st, cat, frames, feats, episodes, ticks, fps, period, robot, task, flush_ticks, log_commits)
    except KeyboardInterrupt:
        console.print("stopped: the episode in flight was left for `recap data fsck --repair`")
        raise typer.Exit(130) from None
    console.print(f"recorded {episodes} episodes into {st.root}")


def stop_on_signals() -> None:
    """SIGINT and SIGTERM stop a recorder cleanly, even when started where SIGINT is ignored
    (background jobs of a non-interactive shell, some service managers)."""
    def _raise(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, _raise)
    signal.signal(signal.SIGTERM, _raise)


def _record_loop(st, cat, frames, feats, episodes, ticks, fps, period, robot, task, flush_ticks, log_commits) -> None:
    from tqdm import tqdm

    for e in tqdm(range(episodes), unit="episode", desc="record"):
        writer = st.new_episode(robot_id=robot, task_id=task, features=feats, fps=fps or 30.0,
                                instruction="synthetic recording", flush_ticks=flush_ticks)
        next_t = time.perf_counter()
        try:
            for t in range(ticks):
                src = ActionSource.CORRECTION if (t // 50) % 4 == 3 else ActionSource.POLICY
                writer.append(frames.tick(t, time.time_ns(), src))
                if period:
                    next_t += period
                    time.sleep(max(0.0, next_t - time.perf_counter()))
        except KeyboardInterrupt:
            writer.abandon()
            raise
        info = writer.commit(Outcome.FAILURE if e % 3 == 2 else Outcome.SUCCESS, robot)
        ep = st.open(info.episode_id)
        if log_commits:
            with open(log_commits, "a") as f:
                f.write(json.dumps({"episode_id": ep.episode_id, "checksum": ep.checksum, "ticks": len(ep)}) + "\n")
                f.flush()
                os.fsync(f.fileno())
        if cat is not None:
            cat.register(ep)
