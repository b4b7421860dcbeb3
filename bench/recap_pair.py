"""Paired comparison of methods across committed recap_sim results, without rerunning the reference.

    python -m bench.recap_pair RESULT:METHOD RESULT:METHOD [RESULT:METHOD ...] --name NAME

RESULT is a results file (`bench/results/NAME.json`, or just NAME); METHOD one of its methods. The first
entry is the reference: every other one is tested against it on the last round's evaluation episodes,
paired by (training seed, task, layout): McNemar's exact test on success, a paired bootstrap interval on
throughput, and the per-seed paired t (difference in standard errors). Pairing across runs holds only when
both runs evaluated the same layouts from the same start, so the runs must agree on tasks, seeds, rounds,
evaluation role and episodes, time limit, and on their shared round 0: its per-episode outcomes where both
files keep them (`round0_per_seed`, written since this tool exists), else its mean and standard error over
seeds of success and throughput, overall and per task (a fingerprint of the start, not a per-seed check);
otherwise the comparison is refused, as is a file whose episode lists are incomplete.
Writes NAME.md and NAME.json (command, date, figures) to the results folder.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bench.recap_sim import (RESULTS, bootstrap_throughput_diff, discordant, mcnemar_p, mean_se, paired_diff_in_se,
                             one_line, paired_episodes, primary_group, write_keeping_reading)

SAME = ("rounds", "eval_role", "eval_episodes", "max_steps", "demos_per_task", "episodes_per_round")


class PairError(ValueError):
    pass


def load_entry(spec: str, results: Path, group: str = "tuning") -> dict:
    """One RESULT:METHOD entry, its `group`'s records (tuning: the run's primary tasks; test: its test tasks)."""
    path, sep, method = spec.rpartition(":")
    if not sep or not path or not method:
        raise PairError(f"{spec!r}: expected RESULT:METHOD, e.g. recap_sim-hard-sweep-validation:recap")
    p = Path(path)
    if p.suffix != ".json":  # a results name (which may hold dots, e.g. a swept value)
        p = results / f"{path}.json"
    if not p.is_file():
        raise PairError(f"{spec!r}: no results file {p}")
    try:
        r = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PairError(f"{p}: not a results file ({e})") from None
    try:
        return _entry(r, p, method, group, spec)
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as e:
        if isinstance(e, PairError):
            raise
        raise PairError(f"{p}: not a complete recap_sim results file ({type(e).__name__}: {e})") from None


def _entry(r: dict, p: Path, method: str, group: str, spec: str) -> dict:
    if not isinstance(r, dict) or "records" not in r or "config" not in r:
        raise PairError(f"{p}: not a recap_sim results file (no records)")
    groups = r.get("groups") or {"tuning": r["config"]["tasks"]}
    if group not in groups:
        raise PairError(f"{spec!r}: {p.name} has no {group} tasks (it has {', '.join(groups)})")
    prefix = "" if group == primary_group(groups) else f"{group}_"
    records = r[f"{prefix}records"]
    seeds = [int(x) for x in r.get("seeds") or sorted({int(k.rsplit("/s", 1)[1]) for k in records})]
    if not all(f"{method}/s{s}" in records for s in seeds):
        have = sorted({k.rsplit("/s", 1)[0] for k in records})
        raise PairError(f"{spec!r}: {p.name} has no method {method!r} (it has {', '.join(have)})")
    rounds, n, tasks = int(r["config"]["rounds"]), int(r["config"]["eval_episodes"]), list(groups[group])
    for s in seeds:  # every episode list complete, or the pairs would shift
        runs = records[f"{method}/s{s}"]
        if len(runs) < rounds:
            raise PairError(f"{spec!r}: seed {s} has {len(runs)} of {rounds} rounds in {p.name}")
        ev = runs[rounds - 1]["eval"]
        for t in tasks:
            for key in ("per_episode_success", "per_episode_steps"):
                if len(ev[key][t]) != n:
                    raise PairError(f"{spec!r}: seed {s}, {t}: {len(ev[key][t])} of {n} evaluation episodes in "
                                    f"{p.name} ({key}); the pairs would not line up")
    round0 = next((row for row in r["figures"].get(f"{prefix}table", []) if row["round"] == 0), None)
    return {"label": f"{p.stem}:{method}", "file": p.name, "method": method, "seeds": seeds, "config": r["config"],
            "tasks": tasks, "records": {(method, s): records[f"{method}/s{s}"] for s in seeds},
            "round0": round0, "round0_episodes": r.get(f"{prefix}round0_per_seed")}


def check_pairable(a: dict, b: dict) -> None:
    if a["tasks"] != b["tasks"]:
        raise PairError(f"{b['label']} and {a['label']} differ in tasks ({b['tasks']!r} vs {a['tasks']!r}): "
                        "their episodes do not pair")
    for key in SAME:
        if a["config"].get(key) != b["config"].get(key):
            raise PairError(f"{b['label']} and {a['label']} differ in {key} "
                            f"({b['config'].get(key)!r} vs {a['config'].get(key)!r}): their episodes do not pair")
    if a["seeds"] != b["seeds"]:
        raise PairError(f"{b['label']} and {a['label']} have different training seeds ({b['seeds']} vs {a['seeds']})")
    if a["round0_episodes"] and b["round0_episodes"]:
        if a["round0_episodes"] != b["round0_episodes"]:
            raise PairError(f"{b['label']} and {a['label']} start from different round-0 policies "
                            "(their round-0 evaluation episodes differ)")
        return
    r0a, r0b = a["round0"], b["round0"]
    if not r0a or not r0b:
        raise PairError(f"{a['label'] if not r0a else b['label']} has no round-0 row to check the pairing against")
    for key in ("success_rate", "throughput_per_h"):  # mean and s.e. over seeds, overall and per task
        same = np.allclose(r0a[key], r0b[key], rtol=1e-9, atol=1e-9, equal_nan=True) and all(
            np.allclose(r0a[f"{key}_per_task"][t], r0b[f"{key}_per_task"][t], rtol=1e-9, atol=1e-9, equal_nan=True)
            for t in a["tasks"])
        if not same:
            raise PairError(f"{b['label']} and {a['label']} start from different round-0 policies "
                            f"(round-0 {key} {r0b[key]} vs {r0a[key]})")


def compare(entries: list[dict]) -> dict:
    ref = entries[0]
    for e in entries[1:]:
        check_pairable(ref, e)
    tasks, rounds, seeds = ref["tasks"], ref["config"]["rounds"], ref["seeds"]

    def last(e, key):
        return [e["records"][(e["method"], s)][rounds - 1]["eval"]["all"][key] for s in seeds]

    rows = [{"label": e["label"], "success_rate": mean_se(last(e, "success_rate")),
             "throughput_per_h": mean_se(last(e, "throughput_per_h")),
             "per_seed_success": last(e, "success_rate")} for e in entries]
    a_eps = paired_episodes(ref["records"], ref["method"], seeds, tasks, rounds)
    tests = []
    for e in entries[1:]:
        b_eps = paired_episodes(e["records"], e["method"], seeds, tasks, rounds)
        a_only, b_only = discordant(b_eps[0], a_eps[0])
        tests.append({"a": e["label"], "b": ref["label"], "pairs": len(a_eps[0]), "a_only": a_only, "b_only": b_only,
                      "mcnemar_p": mcnemar_p(b_eps[0], a_eps[0]),
                      "throughput_diff_ci95": bootstrap_throughput_diff(b_eps, a_eps),
                      "throughput_diff_in_se": _finite(paired_diff_in_se(last(e, "throughput_per_h"),
                                                                         last(ref, "throughput_per_h")))})
    return {"tasks": tasks, "seeds": seeds, "rounds": rounds, "eval_role": ref["config"].get("eval_role", "evaluation"),
            "reference": ref["label"], "rows": rows, "paired_tests": tests}


def render(fig: dict, command: str, date: str, name: str, note: str | None) -> str:
    lines = [f"# Paired comparison across committed runs ({name})", ""]
    if note:
        lines += [f"**{note}**", ""]
    lines += [f"Command: `{command}` — {date} — tasks {', '.join(fig['tasks'])}; training seeds {fig['seeds']}; "
              f"round {fig['rounds']}; {fig['eval_role']} layouts, paired by (seed, task, layout).", "",
              "| run:method | success | throughput (successes/h) | success per seed |", "| --- | --- | --- | --- |"]
    for r in fig["rows"]:
        lines.append(f"| {r['label']} | {r['success_rate'][0]:.3f} ± {r['success_rate'][1]:.3f} | "
                     f"{r['throughput_per_h'][0]:.0f} ± {r['throughput_per_h'][1]:.0f} | "
                     f"{' / '.join(f'{x:.3f}' for x in r['per_seed_success'])} |")
    lines += ["", f"Against the reference, {fig['reference']} (McNemar exact on success; paired bootstrap 95 % "
                  "interval and per-seed paired t on throughput):", "",
              "| run:method | pairs | row wins / reference wins | McNemar p | throughput diff CI95 (/h) | diff in s.e. |",
              "| --- | --- | --- | --- | --- | --- |"]
    for t in fig["paired_tests"]:
        lo, hi = t["throughput_diff_ci95"]
        lines.append(f"| {t['a']} | {t['pairs']} | {t['a_only']} / {t['b_only']} | {t['mcnemar_p']:.3g} | "
                     f"[{lo:.0f}, {hi:.0f}] | {_in_se(t)} |")
    return "\n".join(lines) + "\n"


def _finite(x: float) -> float | None:
    """None for NaN: the results file stays strict JSON."""
    return x if x == x else None


def _in_se(test: dict) -> str:
    """The per-seed t, or why there is none (the same throughput on every seed: no spread to divide by)."""
    x = test["throughput_diff_in_se"]
    if x is not None and x == x:
        return f"{x:.2f}"
    return "- (the same on every seed)" if [float(v) for v in test["throughput_diff_ci95"]] == [0.0, 0.0] else "-"


def _is_pairing(path: Path) -> bool:
    """Whether a results file was written by this tool (the only kind it may overwrite)."""
    try:
        figures = json.loads(path.read_text(encoding="utf-8")).get("figures", {})
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False
    return isinstance(figures, dict) and "reference" in figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("entries", nargs="+", metavar="RESULT:METHOD", help="The reference first, then the runs to test against it.")
    ap.add_argument("--name", required=True, help="Results file stem to write (NAME.md, NAME.json).")
    ap.add_argument("--results-dir", default=str(RESULTS), help="Where RESULT names are looked up and NAME is written.")
    ap.add_argument("--note", default=None, type=one_line, help="A line printed at the top of the results.")
    ap.add_argument("--group", choices=["tuning", "test"], default="tuning",
                    help="Which of the runs' task sets to pair (default tuning, a run's primary tasks).")
    args = ap.parse_args(argv)
    if len(args.entries) < 2:
        ap.error("give a reference and at least one run to compare with it")
    results = Path(args.results_dir)
    out, md_path = results / f"{args.name}.json", results / f"{args.name}.md"
    if Path(args.name).name != args.name or args.name in ("", ".", ".."):
        ap.error(f"--name {args.name!r}: a file stem, without a folder")
    if (out.exists() or md_path.exists()) and not _is_pairing(out):
        ap.error(f"--name {args.name!r}: {out} exists and is not a pairing; choose another name")
    try:
        fig = compare([load_entry(s, results, args.group) for s in args.entries])
    except PairError as e:
        ap.error(str(e))
    command = "python -m bench.recap_pair " + shlex.join(argv if argv is not None else sys.argv[1:])
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    md = render(fig, command, date, args.name, args.note)
    out.write_text(json.dumps({"command": command, "date": date, "note": args.note, "figures": fig}, indent=1))
    write_keeping_reading(md_path, md)  # a rerun keeps what people wrote
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
