"""Benchmark: how much hostile or unlucky input gets through. One real stack (Redis, the API, the
inference server, a worker) is probed by each family in bench/probes/: malformed and oversized
wire bodies, concurrent deploy bursts, forged uploads, dashboard injections, LeRobot exports under
load, bad CLI invocations, degenerate episodes. Every figure is a count of what was tried and of
what got through; the targets are in the table at the end.

    python -m bench.reliability [--only wire,deploy,...]

Writes bench/results/reliability.json ({"command", "date", "figures"}) and reliability.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
FAMILIES = ["wire", "deploy", "uploads", "api", "export", "cli", "degenerate"]

# figure -> (comparison, target): what the hardening promises
TARGETS = {
    "inference_bad_bodies": (">=", 2000), "inference_5xx": ("==", 0), "nonfinite_actions_served": ("==", 0),
    "anonymous_bytes_buffered_max": ("<=", 1 << 20),
    "deploy_bursts": (">=", 20), "served_diverged_after_1s": ("==", 0),
    "upload_forgeries_tried": (">=", 20), "catalog_rows_overwritten": ("==", 0),
    "audit_missing": ("==", 0),
    "dashboard_injections_tried": (">=", 10), "elements_injected": ("==", 0),
    "exports_under_load": (">=", 20), "frames_dropped": ("==", 0),
    "cli_bad_invocations": (">=", 30), "cli_tracebacks": ("==", 0),
    "degenerate_episodes_tried": (">=", 5), "training_runs_crashed": ("==", 0),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def met(value, op: str, target) -> bool:
    return {">=": value >= target, "<=": value <= target, "==": value == target}[op]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(FAMILIES), help=f"comma-separated families ({', '.join(FAMILIES)})")
    ap.add_argument("--results-dir", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    families = [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        ap.error(f"unknown families {unknown}; choose from {FAMILIES}")

    from tests.services.conftest import running_stack

    figures: dict = {}
    seconds: dict = {}
    work = Path(tempfile.mkdtemp(prefix="recap-reliability-"))
    try:
        with running_stack(work / "stack") as stack:
            for name in families:
                log(f"probing {name}")
                t0 = time.monotonic()
                module = importlib.import_module(f"bench.probes.{name}")
                found = module.run(stack, work / name)
                figures.update(found)
                seconds[name] = round(time.monotonic() - t0, 1)
                log(f"{name}: {json.dumps(found)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    args.results_dir.mkdir(parents=True, exist_ok=True)
    command = "python -m bench.reliability" + (f" --only {args.only}" if set(families) != set(FAMILIES) else "")
    doc = {"command": command, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "seconds": seconds, "figures": figures}
    (args.results_dir / "reliability.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = ["# Reliability: hostile and unlucky input", "", f"`{command}` — {doc['date']}", "",
             "| figure | value | target | met |", "| --- | --- | --- | --- |"]
    missed = 0
    for k, v in figures.items():
        if k in TARGETS:
            op, target = TARGETS[k]
            ok = met(v, op, target)
            missed += not ok
            lines.append(f"| `{k}` | {v} | {op} {target} | {'yes' if ok else '**no**'} |")
        else:
            lines.append(f"| `{k}` | {v} | (report) | |")
    lines += ["", "Seconds per family: " + ", ".join(f"{k} {v}" for k, v in seconds.items()), ""]
    (args.results_dir / "reliability.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
