"""Benchmark: our episode store against LeRobot's recorder (LeRobotDataset), side by side in one run.

    python -m bench.store [--quick]

Same frames for both (3 cameras 480x640 RGB of smooth moving scenes with sensor noise, 14-D state
and action, 30 Hz). Each recorder runs in its own process so its CPU (threads and encoder
subprocesses included) is measured alone. Writes bench/results/store.md and store.json.

1. Recording, as fast as each can: ticks/s, CPU seconds per recorded second, commit latency
   (`commit()` vs `save_episode()`), bytes per tick. LeRobot with its default video settings and
   with `streaming_encoding=True`; ratios against the faster of the two.
2. Real time: ours paced at 30 Hz, CPU cores used while recording.
3. Training reads: random (episode, tick) samples of 3 images + state + 50-step action chunk,
   float CHW images, one process: our EpisodeDataset vs LeRobotDataset with delta_timestamps.
4. kill -9: a recorder process loops over short episodes; after it reports ready it is killed at a
   random moment; the same schedule for both. Counted: episodes whose commit/save_episode had
   returned that can no longer be read, and stores that no longer open.
5. Video tier (data/video.py): a copy of our recorded store transcoded (JPEG tier dropped) in one
   process: CPU seconds per recorded second (robot-hours per core-hour), bytes per tick against
   LeRobot's, and the training reads of 3 again from the video tier.

store.json is read, modified and written: figures this run does not make (e.g. `ship_*`, written
by bench/ship.py) are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bench.machine import Steal

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "_work" / "store"
RESULTS = ROOT / "bench" / "results"
FPS = 30
CAMS, H, W, DIM = 3, 480, 640, 14
HORIZON = 50


# --------------------------------------------------------------------------------------------
# workers (run in subprocesses)
# --------------------------------------------------------------------------------------------

def _frames(h=H, w=W):
    from data.synthetic import SyntheticFrames, features

    return SyntheticFrames(features(CAMS, h, w, DIM, DIM), n_frames=30)


def _cpu() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _lerobot_features(h=H, w=W):
    feats = {"observation.state": {"dtype": "float32", "shape": (DIM,), "names": None},
             "action": {"dtype": "float32", "shape": (DIM,), "names": None}}
    for cam in ("top", "left_wrist", "right_wrist")[:CAMS]:
        feats[f"observation.images.{cam}"] = {"dtype": "video", "shape": (h, w, 3), "names": ["height", "width", "channels"]}
    return feats


def _lerobot_frame(tk) -> dict:
    frame = {"observation.state": tk.state, "action": tk.action, "task": "bench"}
    for cam, img in tk.images.items():
        frame[f"observation.images.{cam}"] = img
    return frame


def worker_record(impl: str, out: Path, episodes: int, ticks: int, paced: bool) -> dict:
    frames = _frames()
    commit_s, lateness = [], []
    if impl == "ours":
        from data.store import EpisodeStore

        store = EpisodeStore(out)
        cpu0, wall0 = _cpu(), time.perf_counter()
        for e in range(episodes):
            w = store.new_episode(robot_id="bench", task_id="bench", features=frames.features, fps=FPS)
            start = time.perf_counter()
            for t in range(ticks):
                if paced:
                    due = start + t / FPS
                    now = time.perf_counter()
                    if due > now:
                        time.sleep(due - now)
                    lateness.append(max(0.0, time.perf_counter() - due))
                w.append(frames.tick(t, time.time_ns()))
            c0 = time.perf_counter()
            w.commit("success", "bench")
            commit_s.append(time.perf_counter() - c0)
        wall, cpu = time.perf_counter() - wall0, _cpu() - cpu0
        size = _du(out / "episodes")
    else:
        os.environ["HF_HUB_OFFLINE"] = "1"
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        ds = LeRobotDataset.create(repo_id="bench/rec", fps=FPS, features=_lerobot_features(), root=out,
                                   use_videos=True, streaming_encoding=(impl == "lerobot-streaming"))
        cpu0, wall0 = _cpu(), time.perf_counter()
        for e in range(episodes):
            for t in range(ticks):
                ds.add_frame(_lerobot_frame(frames.tick(t, time.time_ns())))
            c0 = time.perf_counter()
            ds.save_episode()
            commit_s.append(time.perf_counter() - c0)
        ds.finalize()
        wall, cpu = time.perf_counter() - wall0, _cpu() - cpu0
        size = _du(out)
    n = episodes * ticks
    rec = {"impl": impl, "episodes": episodes, "ticks": n, "wall_s": wall, "ticks_per_s": n / wall,
           "cpu_s_per_recorded_s": cpu / (n / FPS), "commit_s": commit_s, "bytes_per_tick": size / n}
    if lateness:
        rec["lateness_p99_ms"] = float(np.percentile(lateness, 99) * 1e3)
    return rec


def worker_read(impl: str, path: Path, samples: int, seed: int = 0, cameras: int = CAMS) -> dict:
    rng = np.random.default_rng(seed)
    if impl == "ours":
        from data.store import EpisodeStore
        from data.torch_dataset import EpisodeDataset

        store = EpisodeStore(path, create=False)
        ds = EpisodeDataset(store, store.episode_ids(), horizon=HORIZON,
                            cameras=["top", "left_wrist", "right_wrist"][:cameras])
    else:
        os.environ["HF_HUB_OFFLINE"] = "1"
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        ds = LeRobotDataset("bench/rec", root=path, delta_timestamps={"action": [i / FPS for i in range(HORIZON)]})
    idx = rng.integers(0, len(ds), samples)
    ds[int(idx[0])]  # warm-up: open files, build indices
    t0 = time.perf_counter()
    for i in idx:
        item = ds[int(i)]
    dt = time.perf_counter() - t0
    shapes = {k: tuple(v.shape) for k, v in item.items() if hasattr(v, "shape") and k.startswith(("obs", "action"))}
    images = sum(1 for k in shapes if k.startswith("observation.images."))
    return {"impl": impl, "samples": samples, "samples_per_s": samples / dt, "len": len(ds), "shapes": shapes,
            "images_per_sample": images}


def worker_transcode(src: Path, out: Path) -> dict:
    """Copy the recorded store (not timed), transcode every episode to the video tier and drop its
    JPEG tier, timing CPU (this process and its threads: encode, verify, checksums)."""
    from data.store import EpisodeStore
    from data.video import transcode_episode

    shutil.copytree(src, out)
    store = EpisodeStore(out, create=False)
    ids = store.episode_ids()
    ticks = sum(len(store.open(e)) for e in ids)
    fps = store.open(ids[0]).info.fps
    jpeg_bytes = _du(out / "episodes")
    cpu0, wall0 = _cpu(), time.perf_counter()
    results = [transcode_episode(store, e, drop_jpeg=True) for e in ids]
    wall, cpu = time.perf_counter() - wall0, _cpu() - cpu0
    if any(r.skipped or r.busy or not r.jpeg_dropped for r in results):
        raise RuntimeError(f"transcode incomplete: {[r.to_dict() for r in results]}")
    # pixel error of the video tier against the JPEG tier it replaced, on random frames
    rng = np.random.default_rng(1)
    ref, vid = EpisodeStore(src, create=False), store
    errs = []
    for _ in range(20):
        eid = ids[int(rng.integers(len(ids)))]
        a, b = ref.open(eid), vid.open(eid)
        cam, t = a.cameras[int(rng.integers(len(a.cameras)))], int(rng.integers(len(a)))
        errs.append(float(np.abs(a.image(cam, t).astype(np.int16) - b.image(cam, t).astype(np.int16)).mean()))
    recorded_s = ticks / fps
    return {"episodes": len(ids), "ticks": ticks, "cpu_s": cpu, "wall_s": wall, "recorded_s": recorded_s,
            "robot_hours_per_core_hour": recorded_s / cpu, "jpeg_bytes_per_tick": jpeg_bytes / ticks,
            "bytes_per_tick": _du(out / "episodes") / ticks, "mean_abs_error_vs_jpeg": float(np.mean(errs)),
            "max_mean_abs_error_vs_jpeg": float(np.max(errs))}


def worker_kill_loop(impl: str, root: Path, log: Path) -> None:
    """Record 30-tick episodes forever; log each one after its commit/save_episode returned."""
    frames = _frames()
    ticks = 30
    if impl == "ours":
        from data.store import EpisodeStore

        store = EpisodeStore(root)
        print("ready", flush=True)
        while True:
            w = store.new_episode(robot_id="bench", task_id="bench", features=frames.features, fps=FPS)
            for t in range(ticks):
                w.append(frames.tick(t, time.time_ns()))
            info = w.commit("success", "bench")
            _log(log, {"episode_id": info.episode_id})
    else:
        os.environ["HF_HUB_OFFLINE"] = "1"
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        if (root / "meta" / "info.json").exists():
            ds = LeRobotDataset.resume("bench/kill", root=root, streaming_encoding=True)
        else:
            ds = LeRobotDataset.create(repo_id="bench/kill", fps=FPS, features=_lerobot_features(), root=root,
                                       use_videos=True, streaming_encoding=True)
        print("ready", flush=True)
        while True:
            for t in range(ticks):
                ds.add_frame(_lerobot_frame(frames.tick(t, time.time_ns())))
            ds.save_episode()
            _log(log, {"episode_index": ds.meta.total_episodes - 1})


def _log(log: Path, rec: dict) -> None:
    with open(log, "a") as f:
        f.write(json.dumps(rec) + "\n")
        f.flush()
        os.fsync(f.fileno())


# --------------------------------------------------------------------------------------------
# orchestration
# --------------------------------------------------------------------------------------------

# glibc's allocator as our reader sets it for itself (data.torch_dataset.keep_freed_frames), given to
# LeRobot's reader from outside for a row beside its stock figure
KEEP_FREED_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}


def _run_worker(*args: str, timeout: float = 3600, env: dict | None = None) -> dict:
    cmd = [sys.executable, "-m", "bench.store", "worker", *args]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **env} if env else None)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


_verified: set[str] = set()


def _check_ours(root: Path, logged: list[dict], full: bool = False) -> tuple[int, bool]:
    """Store opens and lists; every committed episode opens; episodes committed since the last
    check are re-hashed against their manifests (all of them when `full`); then the quick fsck
    an operator runs after a crash recovers the episode that was in flight."""
    from data.fsck import fsck, verify_episode
    from data.store import EpisodeStore

    try:
        store = EpisodeStore(root, create=False)
        ids = set(store.episode_ids())
        for eid in ids:
            store.open(eid)
    except Exception:
        return len(logged), False
    lost = 0
    for r in logged:
        eid = r["episode_id"]
        if eid not in ids:
            lost += 1
        elif full or eid not in _verified:
            if verify_episode(store.episode_dir(eid)) is None:
                _verified.add(eid)
            else:
                lost += 1
    fsck(store, repair=True, verify=False)
    return lost, True


def _check_lerobot(root: Path, logged: list[dict]) -> tuple[int, bool]:
    """Open the dataset as a user would after the crash; an episode counts as kept when its first
    and last frames load."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    try:
        ds = LeRobotDataset("bench/kill", root=root)
        idx = np.asarray(ds.hf_dataset["episode_index"])
    except Exception:
        return len(logged), False
    kept = 0
    for r in logged:
        rows = np.flatnonzero(idx == r["episode_index"])
        try:
            if len(rows):
                ds[int(rows[0])], ds[int(rows[-1])]
                kept += 1
        except Exception:
            pass
    return len(logged) - kept, True


def kill_trials(impl: str, trials: int, seed: int, progress) -> dict:
    """Kill a recorder `trials` times. A store that stops opening is written off (its logged
    episodes all lost) and the next trial starts a fresh one, as a user would have to."""
    rng = random.Random(seed)
    base = WORK / f"kill-{impl}"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    check = _check_ours if impl == "ours" else _check_lerobot
    gens: list[dict] = []  # one entry per store used: committed, lost, opens

    def new_gen():
        g = len(gens)
        gens.append({"root": base / f"store{g}", "log": base / f"log{g}.jsonl", "committed": 0, "lost": 0, "opens": True})
        return gens[-1]

    g = new_gen()
    for trial in range(trials):
        proc = subprocess.Popen([sys.executable, "-m", "bench.store", "worker", "kill-loop", impl, str(g["root"]), str(g["log"])],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        ready = "ready" in proc.stdout.readline()  # printed once imports are done and the store is open
        if ready:
            time.sleep(rng.uniform(0.2, 4.0))
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        logged = [json.loads(x) for x in g["log"].read_text().splitlines()] if g["log"].exists() else []
        lost, opens = check(g["root"], logged) if ready else (len(logged), False)
        g["committed"] = len(logged)
        g["lost"] = max(g["lost"], lost)
        if not opens:
            g["opens"], g["lost"] = False, len(logged)
            g = new_gen()
        progress(impl, trial)
    if impl == "ours" and gens[-1]["opens"]:  # finally re-hash every committed episode once more
        logged = [json.loads(x) for x in g["log"].read_text().splitlines()] if g["log"].exists() else []
        lost, opens = _check_ours(g["root"], logged, full=True)
        g["lost"] = max(g["lost"], lost)
    return {"trials": trials, "committed": sum(x["committed"] for x in gens),
            "committed_lost": sum(x["lost"] for x in gens),
            "unopenable_stores": sum(1 for x in gens if not x["opens"]), "stores_used": len(gens)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="Fewer episodes and kills (minutes, for a smoke run).")
    ap.add_argument("--kills", type=int, default=None, help="kill -9 trials per recorder (default 100, quick 10).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--note", default="", help="A line on the conditions of the run (e.g. other load), kept in the results.")
    ap.add_argument("--peer-kills", type=int, default=None,
                    help="kill -9 trials of LeRobot's recorder (default: as many as ours); 0 keeps its figures from "
                         "the results file (its recorder is not ours to change; its trials take several times ours).")
    ap.add_argument("--parts", default="speed,kill",
                    help="speed (recording, reads, video tier: wants idle cores) and/or kill (the kill -9 trials, "
                         "which count losses, not time): a part not run keeps its figures from the results file.")
    args = ap.parse_args()
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts or parts - {"speed", "kill"}:
        ap.error(f"--parts: choose from speed, kill (got {args.parts!r})")
    quick = args.quick
    kills = args.kills or (10 if quick else 100)
    ours_eps, ticks = (2, 300) if quick else (10, 600)
    lr_eps = 1
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    started = time.time()

    def say(msg):
        print(f"[{time.time() - started:7.1f}s] {msg}", flush=True)

    figures: dict = {}
    raw: dict = {}
    if "speed" in parts:
        speed_figures(quick, ours_eps, ticks, lr_eps, say, figures, raw)
    if "kill" in parts:
        kill_figures(kills, kills if args.peer_kills is None else args.peer_kills, args.seed, say, figures, raw)
    command = ("python -m bench.store" + (" --quick" if quick else "") + (f" --kills {args.kills}" if args.kills else "")
               + (f" --peer-kills {args.peer_kills}" if args.peer_kills is not None else "")
               + (f" --parts {','.join(sorted(parts))}" if parts != {"speed", "kill"} else ""))
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result = {"command": command, "date": now, "machine": f"{os.cpu_count()} cores", "figures": figures,
              "note": args.note, "parts": {p: {"command": command, "date": now, "note": args.note} for p in parts},
              "raw": raw}
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "store-quick" if quick else "store"
    result = _merge_previous(RESULTS / f"{name}.json", result)
    if "speed" in parts:  # the single reads of earlier runs, now the rounds' `reads`
        for k in ("read_ours", "read_lerobot", "read_video", "read_ours_1cam", "read_video_1cam"):
            result["raw"].pop(k, None)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1))
    (RESULTS / f"{name}.md").write_text(render_md(result))
    print(render_md(result))


def speed_figures(quick, ours_eps, ticks, lr_eps, say, figures: dict, raw: dict) -> None:
    """Recording (both recorders), real-time cores, training reads, the video tier: timed, so run on idle cores."""
    say(f"recording: ours {ours_eps}x{ticks} ticks, 3 cameras {H}x{W} at {FPS} Hz")
    steal_rec = Steal().start()
    ours = _run_worker("record", "ours", str(WORK / "ours"), str(ours_eps), str(ticks), "0")
    say(f"  ours: {ours['ticks_per_s']:.1f} ticks/s")
    lr_stream = _run_worker("record", "lerobot-streaming", str(WORK / "lr-streaming"), str(2 if not quick else 1), str(ticks), "0")
    say(f"  lerobot streaming: {lr_stream['ticks_per_s']:.1f} ticks/s")
    lr_default = _run_worker("record", "lerobot-default", str(WORK / "lr-default"), str(lr_eps), str(ticks), "0")
    say(f"  lerobot default: {lr_default['ticks_per_s']:.1f} ticks/s")
    paced = _run_worker("record", "ours", str(WORK / "ours-paced"), "1", str(ticks), "1")
    say(f"  ours at 30 Hz: {paced['cpu_s_per_recorded_s']:.2f} cores")
    steal_rec.stop()

    say("video tier: transcode our recorded store (its training reads follow, beside the others)")
    tc = _run_worker("transcode", str(WORK / "ours"), str(WORK / "ours-video"))
    say(f"  transcode: {tc['robot_hours_per_core_hour']:.2f} robot-hours per core-hour, "
        f"{tc['bytes_per_tick'] / 1e3:.1f} KB per tick")

    # reads interleaved in rounds (ours, LeRobot's, the video tier; the same samples each time): a slow
    # minute of a shared machine falls on every reader alike; ratios are taken within a round
    rounds = 1 if quick else 3
    samples = 150 if quick else 400
    say(f"training reads (random samples, 3 images + state + 50-step chunk), {rounds} interleaved round(s)")
    lr_path = WORK / "lr-streaming"
    reads: dict[str, list[dict]] = {"ours": [], "lerobot": [], "lerobot_keep_freed": [], "video": [], "ours_1cam": [],
                                    "video_1cam": []}
    steal = []
    for k in range(rounds):
        with Steal() as st:
            reads["ours"].append(_run_worker("read", "ours", str(WORK / "ours"), str(samples)))
            try:
                r_lr = _run_worker("read", "lerobot", str(lr_path), str(samples))
            except RuntimeError as e:  # seen once on a busy machine: its video held fewer frames than its rows
                if lr_path.name != "lr-streaming":
                    raise
                why = str(e).strip().splitlines()[-1]
                say(f"  lerobot's streaming-encoded dataset does not read back ({why}); reading its default-encoded one")
                lr_path = WORK / "lr-default"
                r_lr = _run_worker("read", "lerobot", str(lr_path), str(samples))
                r_lr["streaming_read_error"] = why
            r_lr["dataset"] = "streaming" if lr_path.name == "lr-streaming" else "default"
            reads["lerobot"].append(r_lr)
            reads["lerobot_keep_freed"].append(_run_worker("read", "lerobot", str(lr_path), str(samples), env=KEEP_FREED_ENV))
            reads["video"].append(_run_worker("read", "ours", str(WORK / "ours-video"), str(samples)))
            reads["ours_1cam"].append(_run_worker("read", "ours", str(WORK / "ours"), str(samples), "1"))
            reads["video_1cam"].append(_run_worker("read", "ours", str(WORK / "ours-video"), str(samples), "1"))
        steal.append(st.share)
        say(f"  round {k + 1}: ours {reads['ours'][-1]['samples_per_s']:.1f}/s, lerobot {r_lr['samples_per_s']:.1f}/s, "
            f"video tier {reads['video'][-1]['samples_per_s']:.1f}/s (CPU stolen {st.share:.0%})")

    def med(key: str) -> float:
        return float(np.median([r["samples_per_s"] for r in reads[key]]))

    def ratio(key: str) -> float:
        return float(np.median([a["samples_per_s"] / b["samples_per_s"] for a, b in zip(reads[key], reads["lerobot"])]))

    r_ours, r_lr = reads["ours"][-1], reads["lerobot"][-1]
    best_lr = max((lr_stream, lr_default), key=lambda r: r["ticks_per_s"])
    lr_bytes = min(lr_stream["bytes_per_tick"], lr_default["bytes_per_tick"])
    commits = np.array(ours["commit_s"]) * 1e3
    figures.update({
        "record_ticks_per_s": ours["ticks_per_s"],
        "lerobot_default_ticks_per_s": lr_default["ticks_per_s"],
        "lerobot_streaming_ticks_per_s": lr_stream["ticks_per_s"],
        "record_ratio_vs_lerobot": ours["ticks_per_s"] / best_lr["ticks_per_s"],
        "record_steal_share": steal_rec.share,
        "cpu_s_per_recorded_s": ours["cpu_s_per_recorded_s"],
        "lerobot_default_cpu_s_per_recorded_s": lr_default["cpu_s_per_recorded_s"],
        "lerobot_streaming_cpu_s_per_recorded_s": lr_stream["cpu_s_per_recorded_s"],
        "record_cores_3cam_30hz": paced["cpu_s_per_recorded_s"],
        "record_lateness_p99_ms_30hz": paced.get("lateness_p99_ms"),
        "commit_p50_ms": float(np.percentile(commits, 50)),
        "commit_p99_ms": float(np.percentile(commits, 99)),
        "commit_episodes": len(commits),
        "lerobot_default_save_episode_s": float(np.median(lr_default["commit_s"])),
        "lerobot_streaming_save_episode_s": float(np.median(lr_stream["commit_s"])),
        "bytes_per_tick": ours["bytes_per_tick"],
        "lerobot_default_bytes_per_tick": lr_default["bytes_per_tick"],
        "lerobot_streaming_bytes_per_tick": lr_stream["bytes_per_tick"],
        "read_samples_per_s": med("ours"),
        "lerobot_read_samples_per_s": med("lerobot"),
        "read_ratio_vs_lerobot": ratio("ours"),
        "read_rounds": rounds, "read_steal_share": steal,
        "lerobot_keep_freed_read_samples_per_s": med("lerobot_keep_freed"),
        "read_ratio_vs_lerobot_keep_freed": float(np.median([a["samples_per_s"] / b["samples_per_s"] for a, b in
                                                             zip(reads["ours"], reads["lerobot_keep_freed"])])),
        "read_images_per_sample": r_ours["images_per_sample"],
        "lerobot_read_images_per_sample": r_lr["images_per_sample"],
        "read_1cam_samples_per_s": med("ours_1cam"),
        "video_bytes_per_tick": tc["bytes_per_tick"],
        "video_bytes_per_tick_ratio_vs_lerobot": tc["bytes_per_tick"] / lr_bytes,
        "video_read_samples_per_s": med("video"),
        "video_read_ratio_vs_lerobot": ratio("video"),
        "video_read_1cam_samples_per_s": med("video_1cam"),
        "transcode_robot_hours_per_core_hour": tc["robot_hours_per_core_hour"],
        "transcode_cpu_s": tc["cpu_s"],
        "video_mean_abs_error_vs_jpeg": tc["mean_abs_error_vs_jpeg"],
    })
    raw.update({"ours": ours, "lerobot_streaming": lr_stream, "lerobot_default": lr_default, "ours_paced": paced,
                "reads": reads, "transcode": tc})


def kill_figures(kills: int, peer_kills: int, seed: int, say, figures: dict, raw: dict) -> None:
    """kill -9 trials of both recorders (losses, not speed: both schedules at once, same seed)."""
    say(f"kill -9: {kills} trials of ours, {peer_kills} of LeRobot's")
    prog = lambda impl, i: (i + 1) % 10 == 0 and say(f"  {impl}: {i + 1}")
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        f_ours = pool.submit(kill_trials, "ours", kills, seed, prog)
        f_lr = pool.submit(kill_trials, "lerobot", peer_kills, seed, prog) if peer_kills else None
        k_ours = f_ours.result()
        k_lr = f_lr.result() if f_lr else None
    figures.update({
        "kill9_trials": k_ours["trials"],
        "kill9_committed": k_ours["committed"],
        "kill9_committed_lost": k_ours["committed_lost"],
        "kill9_unopenable_stores": k_ours["unopenable_stores"],
    })
    raw["kill_ours"] = k_ours
    if k_lr:
        figures.update({
            "lerobot_kill9_trials": k_lr["trials"],
            "lerobot_kill9_committed": k_lr["committed"],
            "lerobot_kill9_committed_lost": k_lr["committed_lost"],
            "lerobot_kill9_unopenable_stores": k_lr["unopenable_stores"],
        })
        raw["kill_lerobot"] = k_lr


def _merge_previous(path: Path, result: dict) -> dict:
    """Keep what other benchmarks wrote into the same results file (figures and raw entries this run
    does not make, e.g. bench/ship.py's `ship_*`): read, modify, write."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return result
    if not isinstance(old, dict):
        return result
    mine = set(result["figures"])
    kept = {k: v for k, v in (old.get("figures") or {}).items() if k not in mine}
    result["figures"].update(kept)
    for k, v in old.items():
        if k not in result:
            result[k] = v  # e.g. a section of its own another benchmark added
    raw = old.get("raw") or {}
    result["raw"].update({k: v for k, v in raw.items() if k not in result["raw"]})  # parts not run this time
    result["parts"] = {**(old.get("parts") or {}), **result["parts"]}
    return result


def _lerobot_read_error(r: dict) -> str | None:
    raw = r.get("raw") or {}
    reads = (raw.get("reads") or {}).get("lerobot") or [raw.get("read_lerobot") or {}]
    return next((x["streaming_read_error"] for x in reads if x.get("streaming_read_error")), None)


def render_md(r: dict) -> str:
    f = r["figures"]

    def row(name, ours, lr, unit="", fmt="{:.1f}", better="higher"):
        ratio = ours / lr if lr else float("nan")
        return f"| {name} | {fmt.format(ours)}{unit} | {fmt.format(lr)}{unit} | {ratio:.2f}× |"

    best = max(f["lerobot_default_ticks_per_s"], f["lerobot_streaming_ticks_per_s"])
    lines = [
        "# Episode store vs LeRobot's recorder",
        "",
        f"Command: `{r['command']}` — {r['date']} — {r['machine']}. Same synthetic frames for both: "
        f"3 cameras {H}×{W} RGB, 14-D state and action, {FPS} Hz.",
        "",
        *([f"**Conditions:** {r['note']}", ""] if r.get("note") else []),
        *([f"Parts run separately (`--parts`): " + "; ".join(
            f"{name}: `{p['command']}`, {p['date']}" + (f" ({p['note']})" if p.get("note") else "")
            for name, p in sorted(r["parts"].items())) + ".", ""] if len(r.get("parts") or {}) > 1 else []),
        "## Recording (as fast as each can)",
        "",
        "| | ticks/s | CPU s per recorded s | commit / save_episode | bytes per tick |",
        "| --- | --- | --- | --- | --- |",
        f"| ours (JPEG q90, zarr v3) | {f['record_ticks_per_s']:.1f} | {f['cpu_s_per_recorded_s']:.2f} | "
        f"p50 {f['commit_p50_ms']:.0f} ms, p99 {f['commit_p99_ms']:.0f} ms ({f['commit_episodes']} episodes) | {f['bytes_per_tick'] / 1e3:.0f} KB |",
        f"| LeRobot, default video | {f['lerobot_default_ticks_per_s']:.1f} | {f['lerobot_default_cpu_s_per_recorded_s']:.2f} | "
        f"{f['lerobot_default_save_episode_s']:.2f} s | {f['lerobot_default_bytes_per_tick'] / 1e3:.1f} KB |",
        f"| LeRobot, streaming_encoding | {f['lerobot_streaming_ticks_per_s']:.1f} | {f['lerobot_streaming_cpu_s_per_recorded_s']:.2f} | "
        f"{f['lerobot_streaming_save_episode_s']:.2f} s | {f['lerobot_streaming_bytes_per_tick'] / 1e3:.1f} KB |",
        "",
        f"**Recording throughput ratio (ours / LeRobot's faster): {f['record_ratio_vs_lerobot']:.2f}×** (LeRobot best {best:.1f} ticks/s).",
        f"Real time at 30 Hz, ours: **{f['record_cores_3cam_30hz']:.2f} cores** (tick lateness p99 "
        f"{f['record_lateness_p99_ms_30hz']:.1f} ms). Bytes: ours store JPEG per frame (random access), "
        "LeRobot stores AV1 video (far smaller, but a frame needs its neighbours to decode)."
        + (f" CPU stolen by the hypervisor during the recordings: {f['record_steal_share']:.0%}."
           if f.get("record_steal_share") is not None else ""),
        "",
        "## Training reads (random samples: 3 images + state + 50-step action chunk, float CHW, one process)",
        "",
        "| | samples/s |",
        "| --- | --- |",
        f"| ours (EpisodeDataset) | {f['read_samples_per_s']:.1f} |",
        f"| LeRobotDataset (delta_timestamps) | {f['lerobot_read_samples_per_s']:.1f} |",
        *([f"| LeRobotDataset, glibc's allocator set as ours sets it (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_) | "
           f"{f['lerobot_keep_freed_read_samples_per_s']:.1f} (ours / this: {f['read_ratio_vs_lerobot_keep_freed']:.2f}×) |"]
          if f.get("lerobot_keep_freed_read_samples_per_s") else []),
        "",
        f"**Read ratio: {f['read_ratio_vs_lerobot']:.2f}×** ({f['read_images_per_sample']} images per sample, LeRobot "
        f"{f['lerobot_read_images_per_sample']}). One camera per sample: ours {f['read_1cam_samples_per_s']:.1f}/s.",
        "",
        *([f"Reads ran in {f['read_rounds']} interleaved rounds (ours, LeRobot's, the video tier, the same samples "
           "each round); samples/s are the rounds' medians, ratios the median of the ratios within a round. CPU "
           "stolen by the hypervisor per round: " + ", ".join(f"{x:.0%}" for x in f["read_steal_share"]) + ".", ""]
          if f.get("read_rounds") else []),
        *([f"LeRobot's reads came from its default-encoded dataset: its streaming-encoded one did not read "
           f"back ({_lerobot_read_error(r)}).", ""] if _lerobot_read_error(r) else []),
        "## Video tier (committed episodes transcoded: H.264 all-intra, CRF 28; JPEG tier dropped)",
        "",
        "| | bytes per tick | training reads (samples/s) | read ratio vs LeRobot |",
        "| --- | --- | --- | --- |",
        f"| ours, JPEG tier | {f['bytes_per_tick'] / 1e3:.1f} KB | {f['read_samples_per_s']:.1f} | {f['read_ratio_vs_lerobot']:.2f}× |",
        f"| ours, video tier | {f['video_bytes_per_tick'] / 1e3:.1f} KB | {f['video_read_samples_per_s']:.1f} | {f['video_read_ratio_vs_lerobot']:.2f}× |",
        f"| LeRobot (AV1) | {min(f['lerobot_default_bytes_per_tick'], f['lerobot_streaming_bytes_per_tick']) / 1e3:.1f} KB | "
        f"{f['lerobot_read_samples_per_s']:.1f} | 1× |",
        "",
        f"Video bytes per tick / LeRobot's (the smaller of its two): **{f['video_bytes_per_tick_ratio_vs_lerobot']:.2f}×**. "
        f"Transcoding: **{f['transcode_robot_hours_per_core_hour']:.2f} robot-hours per core-hour** "
        f"({f['transcode_cpu_s']:.0f} CPU s, encode + full decode check + checksums). Decoded frames differ from the "
        f"JPEG frames they replace by {f['video_mean_abs_error_vs_jpeg']:.2f} grey levels (mean absolute, 0–255). "
        f"One camera per sample from the video tier: {f['video_read_1cam_samples_per_s']:.1f}/s.",
        "",
        "## kill -9 while recording (30-tick episodes in a loop, killed at a random moment after start-up)",
        "",
        "| | trials | episodes committed (commit/save_episode returned) | of those lost | stores that no longer open |",
        "| --- | --- | --- | --- | --- |",
        f"| ours | {f['kill9_trials']} | {f['kill9_committed']} | {f['kill9_committed_lost']} | {f['kill9_unopenable_stores']} |",
        f"| LeRobot (streaming) | {f['lerobot_kill9_trials']} | {f['lerobot_kill9_committed']} | {f['lerobot_kill9_committed_lost']} | {f['lerobot_kill9_unopenable_stores']} |",
        "",
        "Ours: one store across all trials (each trial a new recorder process appending to it, "
        "`recap data fsck --repair` after each kill). LeRobot: the recorder resumes the same dataset "
        "after each kill; when the dataset no longer opens, its episodes count as lost and the next trial "
        "starts a fresh one.",
        "",
        "## Targets",
        "",
        f"- 0 committed episodes lost, 0 unopenable stores: {f['kill9_committed_lost']} lost, {f['kill9_unopenable_stores']} unopenable.",
        f"- real-time 3-camera recording within one core: {f['record_cores_3cam_30hz']:.2f} cores.",
        f"- ≥ 2× LeRobot's best recording throughput: {f['record_ratio_vs_lerobot']:.2f}×.",
        f"- ≥ 3× its random-access read rate: {f['read_ratio_vs_lerobot']:.2f}×.",
        f"- commit p99 ≤ 250 ms: {f['commit_p99_ms']:.0f} ms.",
        f"- video tier bytes per tick ≤ 1.5× LeRobot's: {f['video_bytes_per_tick_ratio_vs_lerobot']:.2f}×.",
        f"- video tier random-access reads ≥ 3× LeRobot's: {f['video_read_ratio_vs_lerobot']:.2f}×.",
        f"- transcoding ≥ 1 robot-hour per core-hour: {f['transcode_robot_hours_per_core_hour']:.2f}.",
        "",
    ]
    others = {k: v for k, v in f.items() if k.startswith("ship_")}
    if others:
        lines += ["## Other figures in store.json (written by bench/ship.py)", ""]
        lines += [f"- `{k}`: {v:.4g}" if isinstance(v, float) else f"- `{k}`: {v}" for k, v in sorted(others.items())]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        kind = sys.argv[2]
        if kind == "record":
            impl, out, eps, ticks, paced = sys.argv[3:8]
            print(json.dumps(worker_record(impl, Path(out), int(eps), int(ticks), paced == "1")))
        elif kind == "read":
            impl, path, samples = sys.argv[3:6]
            cams = int(sys.argv[6]) if len(sys.argv) > 6 else CAMS
            print(json.dumps(worker_read(impl, Path(path), int(samples), cameras=cams)))
        elif kind == "transcode":
            src, out = sys.argv[3:5]
            print(json.dumps(worker_transcode(Path(src), Path(out))))
        elif kind == "kill-loop":
            impl, root, log = sys.argv[3:6]
            worker_kill_loop(impl, Path(root), Path(log))
    else:
        main()
