"""The demo's results for people who would rather look than read: plots per round and one HTML
page (`demo_out/report.html`) with the same table and the lineage of every policy version."""

from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from services.demo.view import _effort, _gates, _mistake  # noqa: E402


def plot_rounds(records: list[dict], path: Path) -> Path:
    recs = sorted(records, key=lambda r: r["round"])
    x = [r["round"] for r in recs]
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    ax[0].errorbar(x, [r["success_rate"] for r in recs], yerr=[r["success_se"] for r in recs], marker="o", capsize=3,
                   label="fleet")
    for robot in sorted({k for r in recs for k in r["success_per_robot"]}):
        ax[0].plot(x, [r["success_per_robot"].get(robot) for r in recs], ls=":", marker=".", label=robot)
    ax[0].set(title="success rate (autonomous, fixed layouts)", xlabel="round", ylim=(-0.02, 1.02))
    ax[0].legend(fontsize=7)
    ax[1].plot(x, [r["throughput_per_h"] for r in recs], marker="o")
    ax[1].set(title="throughput (successes per robot-hour)", xlabel="round")
    xs = [r["round"] for r in recs if r["round"] > 0]
    ax[2].bar(xs, [100 * r["correction_rate"] for r in recs if r["round"] > 0], color="tab:orange")
    ax[2].set(title="correction ticks while collecting (%)", xlabel="round (collected with the previous version)")
    for a in ax:
        a.set_xticks(x)
        a.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(out: Path, cfg: dict, records: list[dict], versions: list[dict], runs: dict[str, dict],
                 deployments: list[dict], elapsed_s: float, gates: list[dict] = ()) -> Path:
    plots = out / "plots"
    plot_rounds(records, plots / "rounds.png")
    rows = "".join(
        f"<tr><td>{r['round']}</td><td>{r['version']}</td><td>{100 * r['success_rate']:.0f}% ± {100 * r['success_se']:.0f}</td>"
        f"<td>{r['throughput_per_h']:.0f}</td><td>{r['mean_steps']:.0f}</td>"
        f"<td>{'demonstrations' if r['round'] == 0 else f'{r['collected_episodes']} episodes, {100 * r['collected_success_rate']:.0f}% success, {100 * r['correction_rate']:.1f}% correction ticks'}</td>"
        f"<td>{html.escape(_effort(r))}</td><td>{html.escape(_mistake(r))}</td><td>{html.escape(_gates(r))}</td>"
        f"<td>{html.escape(', '.join(f'{k}: {v}' for k, v in sorted(r['robot_versions'].items())))}</td></tr>"
        for r in sorted(records, key=lambda r: r["round"]))
    gate_rows = "".join(
        f"<tr><td>#{g['id']}</td><td>{g['round']}{' (drill)' if g['drill'] else ''}</td><td>{html.escape(g['version_id'])}</td>"
        f"<td>{html.escape(g['robot_id'])}</td><td>{html.escape(g['baseline_version'] or '-')}</td>"
        f"<td>{html.escape(g['status'])}</td><td style='text-align:left'>{html.escape(g['reason'])}</td></tr>"
        for g in gates)
    lineage = []
    for v in versions:
        run = runs.get(v.get("run_id") or "", {})
        curves = f"plots/{v['run_id']}-curves.png" if v.get("run_id") and (out / "plots" / f"{v['run_id']}-curves.png").exists() else ""
        lin = v.get("lineage", {})
        lineage.append(
            f"<h3>{html.escape(v['id'])} <small>({html.escape(v.get('policy_type', '?'))}, "
            f"{html.escape(lin.get('method', '?'))}, parent "
            f"{html.escape(v['parent_version'] if v.get('parent_version') else 'none')})</small></h3>"
            f"<p>run {html.escape(v.get('run_id') or '-')}: {run.get('status', '')}; manifest sha256 "
            f"<code>{html.escape(v['manifest_sha256'][:16])}…</code></p>"
            f"<details><summary>lineage and metrics</summary><pre>{html.escape(json.dumps({'lineage': lin, 'metrics': v.get('metrics', {})}, indent=1)[:20000])}</pre></details>"
            + (f'<img src="{curves}" style="max-width:700px">' if curves else ""))
    deps = "".join(f"<tr><td>#{d['id']}</td><td>{html.escape(d['stage'])}</td><td>{html.escape(d['target_kind'])}:"
                   f"{html.escape(d['target'])}</td><td>{html.escape(d['version_id'])}</td></tr>"
                   for d in sorted(deployments, key=lambda d: d["id"]))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>recap demo report</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}pre{{background:#f6f6f6;padding:8px;font-size:12px}}</style>
</head><body><h1>record → train → deploy on simulated arms</h1>
<p>{cfg['robots']} robots, tasks {html.escape(', '.join(cfg['tasks']))}, {len([r for r in records if r['round'] > 0])} RECAP rounds after a
first fit on {cfg['demos_per_robot'] * cfg['robots']} demonstrations; policy {html.escape(cfg['policy'].get('type', '?'))}{
f", camera {cfg['camera'][0]}x{cfg['camera'][1]}" if cfg.get('camera') else ''}; {elapsed_s / 60:.1f} min. Every episode went through ROS 2
(arm, teleoperator and bridge in separate processes), every training run and deployment through the API.</p>
<h2>Per round</h2><p>Success and throughput: autonomous episodes (no teleoperator) on the same fixed layouts every round.
"Collected": the round's episodes run by the previous version with the corrective teleoperator, the data the round trains on.
Evaluation episodes are flagged as evaluation in the catalog and never selected for training. Human effort while
collecting: takeovers per robot-hour and return on human effort (successes / (1 + minutes of correction), Fleet-DAgger),
and the time from the policy's mistake to the takeover where the teleoperator's station knew it (mean / median seconds;
takeovers whose mistake is known / all takeovers).</p>
<table><tr><th>round</th><th>version</th><th>success</th><th>throughput /h</th><th>mean steps</th><th>collected</th><th>takeovers /robot-h, ROHE</th><th>mistake → takeover</th><th>canary gate</th><th>versions per robot</th></tr>
{rows}</table>
<h2>Canary gates</h2><p>Each new version went to one robot under a gate; every robot worked the same canary layouts until the gate
compared the canary with the rest of the fleet (services/canary.py) and widened or rolled it back by itself.</p>
<table><tr><th>gate</th><th>round</th><th>version</th><th>canary</th><th>fleet ran</th><th>decision</th><th>figures</th></tr>{gate_rows}</table><p><img src="plots/rounds.png" style="max-width:100%"></p>
<h2>Policy versions and their lineage</h2>{''.join(lineage)}
<h2>Deployments</h2><table><tr><th>id</th><th>stage</th><th>target</th><th>version</th></tr>{deps}</table>
</body></html>"""
    f = out / "report.html"
    f.write_text(page)
    (out / "results.json").write_text(json.dumps({
        "config": cfg, "records": records, "elapsed_s": elapsed_s, "gate_decisions": gates,
        "return_on_human_effort": [r.get("return_on_human_effort") for r in sorted(records, key=lambda r: r["round"])],
        "takeovers_per_robot_hour": [r.get("takeovers_per_robot_hour") for r in sorted(records, key=lambda r: r["round"])],
        "mistake_to_takeover_s": [None if r.get("mistake_to_takeover_s_mean") is None else {
            "mean": r["mistake_to_takeover_s_mean"], "median": r["mistake_to_takeover_s_median"],
            "known": r["takeovers_mistake_known"], "takeovers": r["takeovers"]}
            for r in sorted(records, key=lambda r: r["round"])],
        "versions": [{k: v.get(k) for k in ("id", "policy_type", "run_id", "parent_version")} for v in versions]},
        indent=1))
    return f
