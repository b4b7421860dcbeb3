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
    md = (tmp_path / "results" / "tiny.md").read_text()
    assert "| recap | 1 |" in md
    # the hard preset trains RECAP on its positives alone: its "negative" indicator is never trained, so no gap is claimed
    assert result["config"]["recap"]["negative_weight"] == 0.0
    # ... and caps each task's positive share at its policy episodes' success rate: the share each round's labels
    # were set for is in the diagnostics and the report
    assert result["config"]["recap"]["positive_fraction_cap"] == "success_rate"
    shares = [s for d in result["diagnostics"] for per in d["positive_fraction_by_task"].values() for s in per.values()]
    assert shares and all(0 < s <= 0.4 for s in shares)
    assert "Positive share the round's labels were set for" in md
    assert f["conditioning_gap_success"] is None and "never trains on a negative indicator" in f["conditioning_gap_note"]
    assert "never trains on a negative indicator" in md
    # the diagnostics say where the positive labels came from, per seed and in the report
    assert all(set(d["positives_by_source"]["1"]) == {"demonstration", "correction", "policy_success", "policy_failure"}
               for d in result["diagnostics"])
    assert "Where the last round's positive labels come from" in md
    # a run written before the metric: the same figures from the labels and episodes it saved
    from bench.recap_sim import _loop, _positives_from_labels

    group = tmp_path / "work" / "tuning"
    run_dir = group / "runs" / "recap-s0-r1"
    saved = json.loads((run_dir / "done.json").read_text())["positives_by_source"]
    cfg = json.loads((tmp_path / "work" / "config.json").read_text())["config"]
    assert json.dumps(_positives_from_labels(_loop(cfg, str(group)), run_dir)) == json.dumps(saved)  # NaN: an empty group
    assert (tmp_path / "results" / "tiny.png").stat().st_size > 1000
    assert {"recap_vs_hgdagger_mcnemar_p", "recap_vs_hgdagger_throughput_diff_ci95", "value_calibration_spearman_next_round",
            "positive_rate_failed_last_quarter", "return_on_human_effort", "tuning_tasks", "test_tasks"} <= set(f)
    assert f["tuning_tasks"] == ["push-v3"] and f["test_tasks"] == []  # --split tuning: no test task ran
    assert {(a["method"], a["seed"]) for a in result["ablation_per_seed"]} == {
        (m, s) for m in ("bc", "hg_dagger", "recap", "recap_select", "filtered_bc", "filtered_bc_select") for s in (0, 1)}
    assert set(f["human_effort"]) == {"bc", "hg_dagger", "recap"}
    # the extraction ablation tested paired: RECAP against each method on the same final dataset
    assert {(t["a"], t["b"]) for t in f["ablation_paired_tests"]} == {
        ("recap", m) for m in ("bc", "hg_dagger", "recap_select", "filtered_bc", "filtered_bc_select")}
    assert all(t["pairs"] == 4 and 0 <= t["success"]["p"] <= 1 for t in f["ablation_paired_tests"])
    assert "## Policy extraction: RECAP against each method trained on RECAP's final dataset" in md
    # another run is paired with this one from its committed file alone, only from the same round 0
    from bench.recap_pair import main as pair_main

    assert set(result["round0_per_seed"]) == {"s0", "s1"}
    assert pair_main(["tiny:bc", "tiny:recap", "--name", "pair", "--results-dir", str(tmp_path / "results")]) == 0
    t = json.loads((tmp_path / "results" / "pair.json").read_text())["figures"]["paired_tests"][0]
    ref = pairs[("bc", "recap")]["success"]
    assert (t["a"], t["b"], t["pairs"]) == ("tiny:recap", "tiny:bc", 4) and (t["b_only"], t["a_only"]) == (ref["a_only"], ref["b_only"])
    moved = dict(result, round0_per_seed={"s0": {"per_episode_success": {"push-v3": [9, 9]}}, "s1": {}})
    (tmp_path / "results" / "moved.json").write_text(json.dumps(moved))
    with pytest.raises(SystemExit) as refused:
        pair_main(["tiny:bc", "moved:recap", "--name", "pair2", "--results-dir", str(tmp_path / "results")])
    assert refused.value.code == 2 and not (tmp_path / "results" / "pair2.json").exists()
    # resumable: a rerun with the same config reads every finished cell back and trains nothing; diagnostics cells
    # written before runs reported positives_by_source get it from the runs' saved labels
    for cell in (tmp_path / "work" / "tuning" / "cells").glob("diagnostics-s*.json"):
        d = json.loads(cell.read_text())
        del d["positives_by_source"]
        cell.write_text(json.dumps(d))
    # ... keeps the reading people wrote under the report, and counts the time of both invocations
    assert f["invocations"] == 1 and f["elapsed_total_s"] > 0
    (tmp_path / "results" / "tiny.md").write_text(md + "\n## Reading\n\nWhat it means.\n")
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=580)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert "round 1: success" not in again.stdout and "training run" not in again.stderr
    rerun = json.loads((tmp_path / "results" / "tiny.json").read_text())
    assert rerun["records"] == result["records"]
    assert rerun["figures"]["invocations"] == 2 and rerun["figures"]["elapsed_total_s"] > f["elapsed_total_s"]
    md2 = (tmp_path / "results" / "tiny.md").read_text()
    assert "Where the last round's positive labels come from" in md2 and "over the 2 invocations" in md2
    assert md2.endswith("\n## Reading\n\nWhat it means.\n") and md2.count("## Reading") == 1
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


def test_committed_runs_pair_only_from_the_same_start(tmp_path, capsys):
    """bench/recap_pair on committed validation results: the pairing reproduces the paired test the run itself
    wrote, and runs of another task, a missing method or a malformed entry are refused with one line."""
    from bench.recap_pair import main as pair_main
    from bench.recap_sim import RESULTS

    name = "recap_sim-hard-sweep-validation"
    committed = json.loads((RESULTS / f"{name}.json").read_text())["figures"]["paired_tests"]
    ref = next(t for t in committed if (t["a"], t["b"]) == ("filtered_bc", "recap"))
    out = tmp_path / "out"
    out.mkdir()
    for stem in (name, "recap_sim-hard-extraction-hammer-validation", "recap_sim-hard-nw0.3-pick-place-wall-validation-validation"):
        (out / f"{stem}.json").write_text((RESULTS / f"{stem}.json").read_text())
    assert pair_main([f"{name}:recap", f"{name}:filtered_bc", "--name", "p", "--results-dir", str(out)]) == 0
    t = json.loads((out / "p.json").read_text())["figures"]["paired_tests"][0]
    assert (t["a_only"], t["b_only"], t["pairs"]) == (ref["success"]["a_only"], ref["success"]["b_only"], 120)
    assert t["throughput_diff_ci95"] == ref["throughput_diff_ci95"]
    # a run that changed nothing (a cap that never bit): no discordant pair, no spread, said so rather than "nan"
    assert pair_main([f"{name}:recap", f"{name}:recap", "--name", "same", "--results-dir", str(out)]) == 0
    assert "| 0 / 0 | 1 | [0, 0] | - (the same on every seed) |" in (out / "same.md").read_text()
    same = json.loads((out / "same.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in a results file"))
    assert same["figures"]["paired_tests"][0]["throughput_diff_in_se"] is None
    assert pair_main([f"{name}:recap", "recap_sim-hard-nw0.3-pick-place-wall-validation-validation:recap", "--name", "p",
                      "--results-dir", str(out)]) == 0  # a name with a dot in it is a name, not a file suffix
    # a run's test tasks pair by --group test, the same way
    reduced = json.loads((RESULTS / "recap_sim-hard-reduced.json").read_text())
    ref = next(t for t in reduced["figures"]["test_paired_tests"] if (t["a"], t["b"]) == ("bc", "recap"))
    (out / "reduced.json").write_text(json.dumps(reduced))
    assert pair_main(["reduced:bc", "reduced:recap", "--group", "test", "--name", "p", "--results-dir", str(out)]) == 0
    t = json.loads((out / "p.json").read_text())["figures"]["paired_tests"][0]
    assert (t["a_only"], t["b_only"]) == (ref["success"]["b_only"], ref["success"]["a_only"]) and t["pairs"] == 200
    for entries, says in (([f"{name}:recap", "recap_sim-hard-extraction-hammer-validation:recap"], "differ in tasks"),
                          ([f"{name}:recap", f"{name}:filtered_bc", "--group", "test"], "has no test tasks"),
                          ([f"{name}:recap", f"{name}:awr"], "has no method 'awr'"),
                          ([f"{name}:recap", "recap"], "expected RESULT:METHOD"),
                          ([f"{name}:recap", "missing:recap"], "no results file")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as refused:
            pair_main([*entries, "--name", "bad", "--results-dir", str(out)])
        err = capsys.readouterr().err
        assert refused.value.code == 2 and says in err and "Traceback" not in err, err
    assert not (out / "bad.json").exists()
    # malformed or incomplete files are refused with one line: the pairs would otherwise shift silently
    good = json.loads((out / f"{name}.json").read_text())
    short = json.loads(json.dumps(good))
    short["records"]["recap/s1"][-1]["eval"]["per_episode_success"]["pick-place-wall-v3"].pop()
    (out / "short.json").write_text(json.dumps(short))
    (out / "list.json").write_text("[1, 2]")
    (out / "latin.json").write_bytes(b"\xff\xfe{")
    fewer = json.loads(json.dumps(good))
    fewer["records"]["recap/s0"] = fewer["records"]["recap/s0"][:1]
    (out / "fewer.json").write_text(json.dumps(fewer))
    for entry, says in (("short:recap", "39 of 40 evaluation episodes"), ("list:recap", "no records"),
                        ("latin:recap", "not a results file"), ("fewer:recap", "1 of 3 rounds")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as refused:
            pair_main([f"{name}:filtered_bc", entry, "--name", "bad", "--results-dir", str(out)])
        err = capsys.readouterr().err
        assert refused.value.code == 2 and says in err and "Traceback" not in err, err
    # the output never replaces a run's results or leaves the folder; a rerun keeps the reading people wrote
    for bad_name in (name, "../escape", "sub/p"):
        with pytest.raises(SystemExit):
            pair_main([f"{name}:recap", f"{name}:filtered_bc", "--name", bad_name, "--results-dir", str(out)])
    assert json.loads((out / f"{name}.json").read_text()) == good and not (tmp_path / "escape.json").exists()
    (out / "p.md").write_text((out / "p.md").read_text() + "\n## Reading\n\nWhat it means.\n")
    assert pair_main([f"{name}:recap", f"{name}:filtered_bc", "--name", "p", "--results-dir", str(out)]) == 0
    assert (out / "p.md").read_text().endswith("\n## Reading\n\nWhat it means.\n")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_validation_sweep_chooses_horizon_and_beta_on_validation_layouts(tmp_path):
    cmd = [sys.executable, "-m", "bench.recap_sim", "--jobs", "2", "--seeds", "1", "--rounds", "1", "--split", "tuning",
           "--methods", "recap", "--no-ablation", "--tasks", "push-v3", "--demos", "2", "--episodes", "2",
           "--eval-episodes", "2", "--max-steps", "40", "--policy-steps", "20",
           "--set", "value.steps=20", "--set", "value.hidden=32", "--set", "policy.hidden=32",
           "--workdir", str(tmp_path / "work"), "--results-dir", str(tmp_path / "results"), "--name", "tiny",
           "--validation", "--sweep", "--sweep-horizons", "end,50", "--sweep-betas", "1,2", "--sweep-positive", "0.3,0.15"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    result = json.loads((tmp_path / "results" / "tiny-validation.json").read_text())
    sw = result["figures"]["sweep"]
    assert sw["eval_role"] == "validation" and result["config"]["eval_role"] == "validation"
    # "end" is the episode time limit; the preset's N (50) is the loop's own final policy, not trained again
    assert [(v["value"], v["N"]) for v in sw["horizon"]["values"]] == [("end", 40), ("50", 50)]
    assert [v["beta"] for v in sw["beta"]["values"]] == [1.0, 2.0]
    assert sw["chosen_horizon"] in (40, 50) and sw["chosen_beta"] in (1.0, 2.0)
    # the positive share: one round, so the preset is the first labelled fit's (0.3), the loop's own policy
    assert [v["positive"] for v in sw["positive"]["values"]] == [0.3, 0.15] and sw["positive"]["preset"] == 0.3
    assert sw["chosen_positive"] in (0.3, 0.15)
    labels = json.loads((tmp_path / "work" / "tuning" / "runs" / "sweep-N50-p0.15-s0" / "labels" / "advantages.json")
                        .read_text())
    assert labels["positive_fraction"] == 0.15 and labels["horizon"] == 50
    # a run of another N keeps the preset's shares in its spec (a resumed older workdir's runs match)
    spec = json.loads((tmp_path / "work" / "tuning" / "runs" / "sweep-N40-s0" / "run.json").read_text())["recap"]
    assert (spec["positive_fraction_first"], spec["positive_fraction_later"]) == (0.3, 0.4)
    for p in (sw["horizon"], sw["beta"], sw["positive"]):
        for v in p["values"]:
            assert v["pooled"]["episodes"] == 2 and set(v["per_seed"]) == {"s0"}
            assert {"success_rate", "throughput_per_h", "mean_duration_s"} <= set(v["pooled"])
        assert p["chosen_vs_preset"]["pairs"] == 2 and 0 <= p["chosen_vs_preset"]["mcnemar_p"] <= 1
    runs = {p.name for p in (tmp_path / "work" / "tuning" / "runs").iterdir()}
    assert runs == {"r0-s0", "recap-s0-r1", "sweep-N40-s0", "sweep-N50-p0.15-s0"}
    md = (tmp_path / "results" / "tiny-validation.md").read_text()
    assert "## Validation sweep" in md and "| end (N = 40) |" in md and "**Choice:**" in md
    assert "### Target positive share" in md and "| 0.15" in md and "positive = " in md
    # resumable: a rerun reads the sweep's cells back
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=280)
    assert again.returncode == 0 and "sweep seed" not in again.stdout, (again.stdout + again.stderr)[-4000:]
    assert json.loads((tmp_path / "results" / "tiny-validation.json").read_text())["figures"]["sweep"] == sw
    # the sweep never chooses on the evaluation layouts; bad values are refused before any work
    for args, says in ((["--sweep"], "--validation"),
                       (["--validation", "--sweep", "--sweep-horizons", "10,25"], "preset's N"),
                       (["--validation", "--sweep", "--sweep-positive", "0.1,0.2"], "preset's share"),
                       (["--validation", "--sweep", "--sweep-positive", "0.4,1.5"], "--sweep-positive")):
        bad = subprocess.run([sys.executable, "-m", "bench.recap_sim", *args, "--workdir", str(tmp_path / "w4")],
                             capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and says in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
        assert len([x for x in bad.stderr.splitlines() if x.startswith("recap_sim.py: error") or "error:" in x]) == 1
    assert not (tmp_path / "w4").exists()


def test_sweep_values_are_parsed_within_recap_bounds():
    from bench.recap_sim import SWEEP_BETAS, SWEEP_HORIZONS, parse_sweep

    assert parse_sweep(SWEEP_HORIZONS, SWEEP_BETAS, 200) == ([("10", 10), ("25", 25), ("50", 50), ("end", 200)],
                                                             [1.0, 1.5, 2.0, 3.0])
    for horizons, betas, says in (("10,x", "1", "--sweep-horizons"), ("0,50", "1", "--sweep-horizons"),
                                  ("50", "1,99", "--sweep-betas"), ("50", "1,nan", "--sweep-betas"),
                                  ("50,end", "1", "given twice")):
        with pytest.raises(ValueError, match=says):
            parse_sweep(horizons, betas, 50)


def test_sweep_positive_shares_are_parsed_within_recap_bounds():
    from bench.recap_sim import parse_positive, preset_positive

    assert parse_positive("") == [] and parse_positive("0.1, 0.2,0.4") == [0.1, 0.2, 0.4]
    for text, says in (("0", "not a positive share"), ("1", "not a positive share"), ("x", "not a positive share"),
                       ("nan", "not a positive share"), ("0.2,0.2", "given twice"),
                       ("0.1,0.10000001", "given twice")):
        with pytest.raises(ValueError, match=says):
            parse_positive(text)
    # the final fit's preset: the first labelled fit's share at one round, the later fits' after more
    assert preset_positive({}, 1) == 0.3 and preset_positive({}, 3) == 0.4
    assert preset_positive({"recap": {"positive_fraction_later": 0.25}}, 2) == 0.25


def test_sweep_figures_read_cells_finished_before_the_share_was_swept():
    """A workdir resumed with --sweep-positive holds N and beta cells written before the share was a sweep
    parameter (no positive_fraction): they are the preset share's, not missing."""
    from bench.recap_sim import sweep_figures

    def cell(seed, n, beta, successes, positive=None):
        c = {"seed": seed, "advantage_horizon": n, "beta": beta, "eval_role": "validation",
             "eval": {"per_episode_success": {"t": successes}, "per_episode_steps": {"t": [40 if s else 100 for s in successes]}}}
        return c if positive is None else {**c, "positive_fraction": positive}

    old = [cell(0, 50, 1.0, [True, False]), cell(0, 10, 1.0, [False, False]), cell(0, 50, 2.0, [True, True])]
    new = [cell(0, 50, 1.0, [True, True], positive=0.1)]
    sweep = {"horizons": [["10", 10], ["50", 50]], "betas": [1.0, 2.0], "preset_horizon": 50, "preset_beta": 1.0}
    fig = sweep_figures(old + new, ["t"], [0], {**sweep, "positives": [0.1, 0.4], "preset_positive": 0.4})
    assert [v["pooled"]["success_rate"] for v in fig["positive"]["values"]] == [1.0, 0.5]
    assert fig["chosen_positive"] == 0.1 and fig["chosen_beta"] == 2.0 and fig["chosen_horizon"] == 50
    # without the share swept, the same old cells make the N and beta tables, and no share table
    fig = sweep_figures(old, ["t"], [0], sweep)
    assert "positive" not in fig and [v["pooled"]["success_rate"] for v in fig["horizon"]["values"]] == [0.0, 0.5]


def test_the_ledger_counts_every_invocation_and_survives_what_it_finds(tmp_path, capsys):
    """WORKDIR/invocations.json: two invocations at once keep both entries; a malformed ledger is moved aside with a
    warning instead of costing the run its results."""
    from bench.recap_sim import Ledger

    path = tmp_path / "invocations.json"
    a, b = Ledger(path), Ledger(path)
    b.entry["started"] = "another"  # two processes of the same second: told apart by start and pid
    for _ in range(50):
        a._write()
        b._write()
    spent_b, spent_a = b.close(), a.close()
    assert spent_a["invocations"] == spent_b["invocations"] == 2
    assert len(json.loads(path.read_text())["invocations"]) == 2 and not list(tmp_path.glob("*.tmp"))
    for bad in ('{"invocations": {"a": 1}}', '{"invocations": [1, 2]}', '{"invocations": [{"elapsed_s": "abc"}]}',
                '{"invocations": [{"elapsed_s": null}]}', '{"invocations": [{"elapsed_s": NaN}]}', "[1]", "{garbled"):
        path.write_text(bad)
        spent = Ledger(path).close()
        assert spent["invocations"] == 1 and 0 <= spent["elapsed_s"] < 60, bad
        assert (tmp_path / "invocations.json.bad").read_text() == bad and "moved to" in capsys.readouterr().out


def test_a_rerendered_report_keeps_its_reading_and_notes_are_one_line(tmp_path):
    from bench.recap_sim import write_keeping_reading

    md = tmp_path / "r.md"
    md.write_text("# old figures\n\n## Reading (2026-12-05)\n\nWhat it means.\n## Readings of the probes\n")
    write_keeping_reading(md, "# new figures\n")
    write_keeping_reading(md, "# new figures\n")
    assert md.read_text() == "# new figures\n\n## Reading (2026-12-05)\n\nWhat it means.\n## Readings of the probes\n"
    md.write_bytes(b"\xff\xfe# not utf-8")
    write_keeping_reading(md, "# new figures\n")
    assert md.read_text() == "# new figures\n"
    for tool in ("bench.recap_sim", "bench.recap_pair"):
        bad = subprocess.run([sys.executable, "-m", tool, "--note", "a\n## Reading", "--workdir", str(tmp_path / "w")],
                             capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and "--note" in bad.stderr and "one line" in bad.stderr, bad.stderr
        assert not (tmp_path / "w").exists()
