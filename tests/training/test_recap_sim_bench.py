"""The RECAP benchmark script end to end at a tiny size: shared round 0, each method's loop,
diagnostics, the policy-extraction ablation, and the committed result files (table, figures, plot).
The numbers mean nothing at this size; the file layout and the figures' presence do."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_benchmark_script_writes_its_table_figures_and_plot(tmp_path):
    cmd = [sys.executable, "-m", "bench.recap_sim", "--jobs", "2", "--seeds", "2", "--rounds", "1", "--split", "tuning",
           "--methods", "bc,hg_dagger,recap", "--tasks", "push-v3", "--demos", "2", "--episodes", "2",
           "--eval-episodes", "2", "--max-steps", "40", "--policy-steps", "20",
           "--set", "value.steps=20", "--set", "value.hidden=32", "--set", "policy.hidden=32",
           "--workdir", str(tmp_path / "work"), "--results-dir", str(tmp_path / "results"), "--name", "tiny"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=580)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    result = json.loads((tmp_path / "results" / "tiny.json").read_text())
    assert {"command", "date", "figures"} <= set(result)
    f = result["figures"]
    assert f["tasks"] == ["push-v3"] and f["seeds"] == 2 and f["rounds"] == 1
    for key in ("recap_throughput_ratio_vs_bc", "recap_failure_ratio_vs_bc", "recap_vs_hgdagger_throughput_diff_in_se",
                "conditioning_gap_success", "ablation"):
        assert key in f, key
    # the ablation's value-guided selection beside its methods, with its latency measured beside plain sampling
    assert set(f["ablation"]) == {"bc", "hg_dagger", "recap", "recap_select", "filtered_bc", "filtered_bc_select"}
    assert {"selection_gain_throughput", "selection_gain_throughput_filtered_bc", "selection_latency"} <= set(f)
    assert f["selection_latency"]["select_chunks"] == 4 and f["selection_latency"]["selection_ms_median"] > 0
    assert result["seeds"] == [0, 1] and "native_flow" in result["policy_types_through_loop"]
    assert set(f["per_seed_last_round"]) == {"bc", "hg_dagger", "recap"}
    pairs = {(t["a"], t["b"]): t for t in f["paired_tests"]}
    assert set(pairs) == {("bc", "hg_dagger"), ("bc", "recap"), ("hg_dagger", "recap")}
    assert all(t["pairs"] == 4 and 0 <= t["success"]["p"] <= 1 for t in pairs.values())
    rows = {(r["method"], r["round"]) for r in f["table"]}
    assert rows == {(m, r) for m in ("bc", "hg_dagger", "recap") for r in (0, 1)}
    assert "| recap | 1 |" in (tmp_path / "results" / "tiny.md").read_text()
    assert (tmp_path / "results" / "tiny.png").stat().st_size > 1000
    assert {"recap_vs_hgdagger_mcnemar_p", "recap_vs_hgdagger_throughput_diff_ci95", "value_calibration_spearman_next_round",
            "positive_rate_failed_last_quarter", "return_on_human_effort", "tuning_tasks", "test_tasks"} <= set(f)
    assert {(a["method"], a["seed"]) for a in result["ablation_per_seed"]} == {
        (m, s) for m in ("bc", "hg_dagger", "recap", "recap_select", "filtered_bc", "filtered_bc_select") for s in (0, 1)}
    assert set(f["human_effort"]) == {"bc", "hg_dagger", "recap"}
    # resumable: a rerun with the same config reads every finished cell back and trains nothing
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=580)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert "round 1: success" not in again.stdout and "training run" not in again.stderr
    assert json.loads((tmp_path / "results" / "tiny.json").read_text())["records"] == result["records"]
    other = subprocess.run([*cmd[:-2], "--name", "tiny2", "--rounds", "2"], capture_output=True, text=True, timeout=120)
    assert other.returncode == 2 and "another config" in other.stderr
    # bad overrides are refused with a message, before any work
    bad = subprocess.run([sys.executable, "-m", "bench.recap_sim", "--set", "optimizer.lr=1", "--workdir", str(tmp_path / "w2")], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "--set" in bad.stderr
    for args, says in ((["--policy", "pi05"], "unknown policy type"), (["--image", "--set", "policy.dim_modle=8"], "dim_modle"),
                       (["--camera", "96by128"], "--camera")):
        bad = subprocess.run([sys.executable, "-m", "bench.recap_sim", *args, "--workdir", str(tmp_path / "w3")],
                             capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and says in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


def test_overrides_are_checked_and_every_accepted_key_is_used():
    from bench.recap_sim import HARD, apply_overrides

    cfg = apply_overrides(HARD, ["recap.cfg_beta=1.5", "recap.advantage_horizon=25", "value.steps=900", "policy.lr=0.001"])
    assert cfg["cfg_beta"] == 1.5 and "cfg_beta" not in cfg["recap"]  # RECAP-CFG's guidance, not plain RECAP's
    assert cfg["recap"]["advantage_horizon"] == 25 and cfg["value"]["steps"] == 900 and cfg["policy"]["lr"] == 0.001
    assert HARD["value"]["steps"] == 800  # the preset is untouched
    from training.sim.loop import LoopConfig

    assert LoopConfig(**{k: v for k, v in cfg.items() if k in LoopConfig.__dataclass_fields__}).cfg_beta == 1.5
    assert apply_overrides(HARD, ["recap.select_chunks=8"])["select_chunks"] == 8  # the "+ selection" methods' K
    for bad, says in (("recap.select_chunks=99", "recap.select_chunks"), ("recap.cfg_betta=2", "recap.cfg_betta"), ("value.seed=3", "value.seed"),
                      ("recap.cfg_beta=99", "recap.cfg_beta"), ("policy.hiden=8", "hiden"), ("loop.x=1", "expected")):
        with pytest.raises(ValueError, match=says):
            apply_overrides(HARD, [bad])


def test_paired_statistics_on_known_episodes():
    from bench.recap_sim import bootstrap_throughput_diff, mcnemar_p

    a = ([1] * 30 + [0] * 10, [80] * 30 + [400] * 10)
    b = ([1] * 10 + [0] * 30, [80] * 10 + [400] * 30)
    assert mcnemar_p(a[0], b[0]) < 1e-4 and mcnemar_p(a[0], a[0]) == 1.0
    lo, hi = bootstrap_throughput_diff(a, b)
    assert 0 < lo < hi
    lo, hi = bootstrap_throughput_diff(a, a)
    assert lo == hi == 0.0
