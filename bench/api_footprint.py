"""Benchmark: the control-plane API process's memory and start time, before and after it stopped
importing torch, side by side in one run.

    python -m bench.api_footprint [--reps 5] [--before 5406732]

"before" is the tree of commit --before (the last one whose API imported torch, only to hash
artifact files), exported with `git archive` into bench/_work/; "after" is this checkout. Both are
started by the same launcher (services/launch.py `start_uvicorn`, the one `recap serve up` and the
tests use), one at a time, alternating, against one Redis, each with a fresh RECAP_HOME:
- start: from spawning the process to /healthz answering 200 (the launcher polls every 0.1 s);
- RSS: the process's resident memory after one authenticated call (GET /v1/versions);
- torch: whether torch's shared libraries are mapped in the process (/proc/PID/maps).
Medians of --reps starts each. Writes bench/results/api_footprint.md and api_footprint.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import psutil

from services.launch import start_redis, start_uvicorn

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "_work" / "api_footprint"
RESULTS = ROOT / "bench" / "results"
TOKEN = "rcp_bench_admin_token"
TORCH_LIBRARY = re.compile(r"/torch/(lib/libtorch|_C)")


def export_tree(rev: str, into: Path) -> str:
    """The tree of `rev`, as files (no checkout, no worktree); returns the full commit id."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"],
                            check=True, capture_output=True, text=True).stdout.strip()
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", commit], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(into)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise RuntimeError(f"git archive {commit} failed")
    return commit


def measure(tree: Path, redis_url: str, home: Path) -> dict:
    """One start of the API from `tree`: seconds to healthy, RSS in MiB, whether torch is mapped."""
    env = {"PYTHONPATH": str(tree), "RECAP_HOME": str(home), "RECAP_REDIS_URL": redis_url,
           "RECAP_BOOTSTRAP_ADMIN_TOKEN": TOKEN}
    t0 = time.monotonic()
    api = start_uvicorn("api", "services.api.app:create_app", home / "logs", env)
    start_s = time.monotonic() - t0
    try:
        r = httpx.get(api.url + "/v1/versions", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        r.raise_for_status()
        pid = api.popen.pid
        rss_mb = psutil.Process(pid).memory_info().rss / 2**20
        torch = bool(TORCH_LIBRARY.search(Path(f"/proc/{pid}/maps").read_text()))
    finally:
        api.stop()
    return {"start_s": start_s, "rss_mb": rss_mb, "imports_torch": torch}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5, help="Starts of each tree (alternating).")
    ap.add_argument("--before", default="5406732", help="The commit measured as 'before'.")
    args = ap.parse_args()

    trees = {"before": WORK / "before", "after": ROOT}
    before_commit = export_tree(args.before, trees["before"])
    after_commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                                  text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True).stdout.strip())
    # `python -m uvicorn` puts its working directory first on sys.path: start from one that holds neither tree
    os.chdir(WORK)
    redis = start_redis(WORK / "redis")
    samples: dict[str, list[dict]] = {"before": [], "after": []}
    try:
        for name, tree in trees.items():  # byte-code compiled and file caches warm for both, not timed
            measure(tree, redis.url, WORK / f"warmup-{name}")
        for i in range(args.reps):
            for name, tree in trees.items():
                s = measure(tree, redis.url, WORK / f"{name}-{i}")
                samples[name].append(s)
                print(f"{name} #{i}: {s['start_s']:.2f} s to healthy, {s['rss_mb']:.0f} MiB RSS, "
                      f"torch {'loaded' if s['imports_torch'] else 'not loaded'}", flush=True)
    finally:
        redis.stop()
        for name in [p.name for p in WORK.iterdir() if p.name not in ("before",)]:
            shutil.rmtree(WORK / name, ignore_errors=True)

    def median(name: str, key: str) -> float:
        return round(statistics.median(s[key] for s in samples[name]), 3)

    figures = {
        "api_imports_torch": any(s["imports_torch"] for s in samples["after"]),
        "api_imports_torch_before": any(s["imports_torch"] for s in samples["before"]),
        "api_rss_mb_before": median("before", "rss_mb"), "api_rss_mb_after": median("after", "rss_mb"),
        "api_start_s_before": median("before", "start_s"), "api_start_s_after": median("after", "start_s"),
        "repetitions": args.reps,
        "before_commit": before_commit, "after_commit": after_commit + ("+uncommitted" if dirty else ""),
        "samples": {k: [{m: round(v, 3) if isinstance(v, float) else v for m, v in s.items()} for s in ss]
                    for k, ss in samples.items()},
    }
    out = {"command": "python -m bench.api_footprint " + " ".join(sys.argv[1:]),
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end",
           "figures": figures}
    out["command"] = out["command"].strip()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "api_footprint.json").write_text(json.dumps(out, indent=1))
    (RESULTS / "api_footprint.md").write_text(render(out))
    print(render(out))


def render(out: dict) -> str:
    f = out["figures"]
    return "\n".join([
        "# The control-plane API process: memory and start time, with and without torch", "",
        f"Command: `{out['command']}` — {out['date']} — {out['machine']}. \"before\" = commit "
        f"{f['before_commit'][:10]} (the API imported torch to hash artifact files), \"after\" = "
        f"{f['after_commit'][:10]} (verification in the torch-free data/artifact_manifest.py). Both started by "
        "services/launch.py `start_uvicorn`, alternating, fresh RECAP_HOME each; medians of "
        f"{f['repetitions']} starts. Start = spawn to /healthz 200 (polled every 0.1 s); RSS after one "
        "authenticated GET /v1/versions.", "",
        "| tree | torch loaded | RSS MiB | start s |",
        "| --- | --- | --- | --- |",
        f"| before | {'yes' if f['api_imports_torch_before'] else 'no'} | {f['api_rss_mb_before']:.0f} | "
        f"{f['api_start_s_before']:.2f} |",
        f"| after | {'yes' if f['api_imports_torch'] else 'no'} | {f['api_rss_mb_after']:.0f} | "
        f"{f['api_start_s_after']:.2f} |", "",
        f"RSS {f['api_rss_mb_after'] / f['api_rss_mb_before']:.2f}× and start time "
        f"{f['api_start_s_after'] / f['api_start_s_before']:.2f}× of before.", ""])


if __name__ == "__main__":
    main()
