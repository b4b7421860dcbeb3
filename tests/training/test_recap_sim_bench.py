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
    cmd = [sys.executable, "-m", "bench.recap_sim", "--jobs", "2", "--seeds", "2", "--rounds", "1",
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
    assert set(f["ablation"]) == {"bc", "hg_dagger", "recap"}
    assert result["seeds"] == [0, 1] and "native_flow" in result["policy_types_through_loop"]
    assert set(f["per_seed_last_round"]) == {"bc", "hg_dagger", "recap"}
    pairs = {(t["a"], t["b"]): t for t in f["paired_tests"]}
    assert set(pairs) == {("bc", "hg_dagger"), ("bc", "recap"), ("hg_dagger", "recap")}
    assert all(t["pairs"] == 4 and 0 <= t["success"]["p"] <= 1 for t in pairs.values())
    rows = {(r["method"], r["round"]) for r in f["table"]}
    assert rows == {(m, r) for m in ("bc", "hg_dagger", "recap") for r in (0, 1)}
    assert "| recap | 1 |" in (tmp_path / "results" / "tiny.md").read_text()
    assert (tmp_path / "results" / "tiny.png").stat().st_size > 1000
    # bad overrides are refused with a message, before any work
    bad = subprocess.run([sys.executable, "-m", "bench.recap_sim", "--set", "optimizer.lr=1", "--workdir", str(tmp_path / "w2")], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "--set" in bad.stderr
    for args, says in ((["--policy", "pi05"], "unknown policy type"), (["--image", "--set", "policy.dim_modle=8"], "dim_modle"),
                       (["--camera", "96by128"], "--camera")):
        bad = subprocess.run([sys.executable, "-m", "bench.recap_sim", *args, "--workdir", str(tmp_path / "w3")],
                             capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and says in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
