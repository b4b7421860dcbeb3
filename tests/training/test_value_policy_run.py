"""Value function, advantage labels, methods and a whole training run on small real data."""

import json

import numpy as np
import pytest
import torch

from data.catalog import Catalog
from data.schema import ActionSource, EpisodeFeatures, Outcome, Tick
from data.store import EpisodeStore
from training import recap
from training.advantages import AdvantageLabels, label_advantages
from training.artifacts import ArtifactError, verify_artifact
from training.methods import Method, policy_data
from training.policies.policy import Observation
from training.runs import RunSpec, load_policy, run_training
from training.steps import load_steps
from training.value import ValueConfig
from training.value.trainer_value import (episode_folds, fit_value, held_out_members, normalised_return_targets,
                                         predict_values, task_max_lengths)

T0 = 1_700_000_000_000_000_000


def _toy_store(root, n=16, L=40):
    """A 1-D reach: state = (position, goal flag); successes reach quickly, failures wander.
    Half the episodes are demonstrations; some policy episodes have corrections."""
    store = EpisodeStore(root)
    feats = EpisodeFeatures(state_dim=3, action_dim=2)
    rng = np.random.default_rng(0)
    for i in range(n):
        success = i % 3 != 2
        T = int(rng.integers(10, 25)) if success else L
        demo = i < n // 2
        w = store.new_episode(robot_id="toy", task_id="reach", features=feats, fps=10, instruction="reach the goal",
                              fsync=False, start_time_ns=T0 + i * 10**12)
        for t in range(T):
            state = np.array([t / L, (T - t) / L if success else 1.0, float(success)], np.float32)
            src = ActionSource.DEMONSTRATION if demo else (ActionSource.CORRECTION if 3 <= t < 6 and i % 2 else ActionSource.POLICY)
            action = np.array([1.0 if success else rng.normal(), 0.5], np.float32)
            w.append(Tick(T0 + i * 10**12 + t * 10**8, state, action, src))
        w.commit(Outcome.SUCCESS if success else Outcome.FAILURE, "detector")
    return store


def test_value_function_learns_returns_and_labels_follow(tmp_path):
    store = _toy_store(tmp_path / "s")
    table = load_steps(store, store.episode_ids())
    max_len = task_max_lengths(table, {"reach": 40})
    cfg = ValueConfig(state_dim=3, hidden=64, steps=800, batch_size=128, dropout=0.0, ensemble=1)
    vf, sstats, losses = fit_value(table, cfg, max_len=max_len, progress=False)
    assert np.mean(losses[-20:]) < np.mean(losses[:20])
    v = predict_values(vf, table, sstats, max_len=max_len)
    ret, known = normalised_return_targets(table, max_len, None)
    assert known.all()
    assert np.corrcoef(v, ret)[0, 1] > 0.9
    # deterministic: same seed, same weights
    vf2, _, _ = fit_value(table, cfg, max_len=max_len, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(vf.state_dict().values(), vf2.state_dict().values()))

    labels = label_advantages(table, v, max_len=max_len, horizon=10, positive_fraction=0.4)
    corr = table.source == ActionSource.CORRECTION
    assert labels.indicators[corr].all()
    # the threshold is the quantile over the policy's own ticks: 40 % of them positive, whatever the
    # demonstrations and corrections get
    policy = table.source == ActionSource.POLICY
    assert abs(labels.indicators[policy].mean() - 0.4) < 0.03
    first = label_advantages(table, v, max_len=max_len, horizon=10, positive_fraction=0.3)
    assert abs(first.indicators[policy].mean() - 0.3) < 0.03
    labels.save(tmp_path / "labels")
    again = AdvantageLabels.load(tmp_path / "labels")
    assert np.array_equal(again.indicators, labels.indicators) and again.thresholds == labels.thresholds
    # capped at the share of the policy's ticks in successful episodes: lower where the policy rarely succeeds,
    # the target where it often does; saved with the labels
    in_success = (np.asarray(table.outcomes) == "success")[table.episode_index][policy].mean()
    assert 0.05 < in_success < 0.4
    capped = label_advantages(table, v, max_len=max_len, horizon=10, positive_fraction=0.4, cap="success_share")
    assert capped.fractions == {"reach": pytest.approx(in_success)}
    assert abs(capped.indicators[policy].mean() - in_success) < 0.03 and capped.indicators[corr].all()
    loose = label_advantages(table, v, max_len=max_len, horizon=10, positive_fraction=0.05, cap="success_share")
    assert loose.fractions == {"reach": 0.05}
    # or at the success rate of the policy's episodes (successes are short: a higher share than their ticks')
    ran = np.unique(table.episode_index[policy])
    rate = (np.asarray(table.outcomes)[ran] == "success").mean()
    assert in_success < rate < 0.9
    by_rate = label_advantages(table, v, max_len=max_len, horizon=10, positive_fraction=0.9, cap="success_rate")
    assert by_rate.fractions == {"reach": pytest.approx(rate)}
    with pytest.raises(ValueError, match="cap"):
        label_advantages(table, v, max_len=max_len, horizon=10, positive_fraction=0.4, cap="successes")
    capped.save(tmp_path / "capped")
    assert AdvantageLabels.load(tmp_path / "capped").fractions == capped.fractions

    # methods select the data the design says
    bc = policy_data(table, Method.BC)
    assert (table.source[bc.index] == ActionSource.DEMONSTRATION).all()
    dag = policy_data(table, Method.HG_DAGGER)
    assert set(table.source[dag.index]) == {ActionSource.DEMONSTRATION, ActionSource.CORRECTION}
    filt = policy_data(table, Method.FILTERED_BC)
    outcomes = np.asarray(table.outcomes)[table.episode_index[filt.index]]
    srcs = table.source[filt.index]
    assert ((outcomes == "success") | (srcs != ActionSource.POLICY)).all()
    awr = policy_data(table, Method.AWR, labels)
    assert awr.weight is not None and awr.weight.max() <= 20.0 and len(awr.index) == len(table)
    rc = policy_data(table, Method.RECAP, labels)
    assert set(rc.indicator) == {recap.INDICATOR_POSITIVE, recap.INDICATOR_NEGATIVE}
    assert rc.weight is None  # the paper: every tick counts the same
    # negative_weight: the negatives count less (same ticks, same indicators), or not at all
    light = policy_data(table, Method.RECAP, labels, negative_weight=0.25)
    assert np.array_equal(light.index, rc.index) and np.array_equal(light.indicator, rc.indicator)
    assert set(light.weight[rc.indicator == recap.INDICATOR_NEGATIVE]) == {0.25}
    assert set(light.weight[rc.indicator == recap.INDICATOR_POSITIVE]) == {1.0}
    alone = policy_data(table, Method.RECAP, labels, negative_weight=0.0)
    assert np.array_equal(alone.index, rc.index[rc.indicator == recap.INDICATOR_POSITIVE])
    assert (alone.indicator == recap.INDICATOR_POSITIVE).all() and alone.weight is None
    tiny = policy_data(table, Method.RECAP, labels, negative_weight=1e-300)  # 0 in the loss's float32: left out
    assert np.array_equal(tiny.index, alone.index) and tiny.weight is None
    with pytest.raises(ValueError, match="negative_weight"):
        policy_data(table, Method.RECAP, labels, negative_weight=1.5)
    first = policy_data(table, Method.RECAP, first_fit=True)
    assert (first.indicator == recap.INDICATOR_POSITIVE).all()
    with pytest.raises(ValueError, match="labels"):
        policy_data(table, Method.AWR)


def test_cross_fitted_value_labels_each_episode_with_the_mean_of_members_that_never_saw_it(tmp_path):
    store = _toy_store(tmp_path / "s", n=24)
    table = load_steps(store, store.episode_ids())
    folds = episode_folds(table, 2, seed=0)
    assert np.array_equal(folds, episode_folds(table, 2, seed=0))  # a resumed run labels with the same split
    for outcome in ("success", "failure"):  # stratified: every member trains on both outcomes
        sel = np.asarray(table.outcomes) == outcome
        assert set(folds[sel]) == {0, 1}
    max_len = {"reach": 40}
    cfg = ValueConfig(state_dim=3, hidden=32, steps=150, batch_size=64, dropout=0.0)  # default: 4 members, 2 folds
    assert (cfg.ensemble, cfg.num_folds) == (4, 2)
    vf, sstats, losses = fit_value(table, cfg, max_len=max_len, progress=False)
    held_out = held_out_members(vf, table, cfg.seed)  # (members, ticks)
    assert held_out.shape == (4, len(table)) and (held_out.sum(0) == 2).all()  # two out-of-fold members per tick
    assert np.array_equal(held_out[0], folds[table.episode_index] == 0)  # split 0: member 0 holds out fold 0
    assert not np.array_equal(held_out[0], held_out[2])  # split 1 is another shuffle
    per_episode = held_out[:, table.starts]  # constant within an episode
    assert all((held_out[:, table.episode_slice(e)] == per_episode[:, [e]]).all() for e in range(table.num_episodes))
    oof = predict_values(vf, table, sstats, max_len=max_len, held_out=held_out)
    members = vf.member_values(_batch(table, sstats, max_len)).numpy()  # (4, N)
    assert np.allclose(oof, (members * held_out).sum(0) / 2, atol=1e-5)
    assert np.allclose(predict_values(vf, table, sstats, max_len=max_len), members.mean(0), atol=1e-5)
    # the training mask keeps a member off its held-out episodes: a batch of ticks member 0 never sees
    # moves only the members that train on them
    from training.value.trainer_value import elapsed_fraction, make_batch

    idx = np.flatnonzero(held_out[0])
    batch = make_batch(table, idx, sstats, torch.device("cpu"), elapsed_fraction(table, max_len))
    batch["return"] = torch.full((len(idx),), -0.5)
    batch["member_mask"] = torch.from_numpy(~held_out[:, idx]).float()
    vf.train()
    vf.zero_grad()
    vf.loss(batch).backward()
    grad_norm = [sum(float(p.grad.abs().sum()) for p in m.parameters() if p.grad is not None) for m in vf.members]
    assert grad_norm[0] == 0.0 and all(g > 0 for g in grad_norm[1:])


def _stuck_store(root, n=24, L=60):
    """State-only data where a timeout looks like any other state: a success waits 0-24 ticks near 0,
    then moves the hand to 1 in 10-19 ticks; a failure stays near 0 until the time limit. Only the
    time tells how much of a stuck episode is left."""
    store = EpisodeStore(root)
    feats = EpisodeFeatures(state_dim=2, action_dim=1)
    rng = np.random.default_rng(1)
    for i in range(n):
        success = i % 2 == 0
        delay, move = int(rng.integers(0, 25)), int(rng.integers(10, 20))
        T = delay + move if success else L
        w = store.new_episode(robot_id="toy", task_id="stuck", features=feats, fps=10, instruction="move",
                              fsync=False, start_time_ns=T0 + i * 10**12)
        for t in range(T):
            pos = (t - delay) / move if success and t >= delay else 0.02 * rng.normal()
            w.append(Tick(T0 + i * 10**12 + t * 10**8, np.array([pos, 1.0], np.float32),
                          np.array([1.0], np.float32), ActionSource.POLICY))
        w.commit(Outcome.SUCCESS if success else Outcome.FAILURE, "detector")
    return store


def test_a_time_aware_value_predicts_how_much_of_a_stuck_episode_is_left(tmp_path):
    from training.calibration import correlations

    store = _stuck_store(tmp_path / "s")
    table = load_steps(store, store.episode_ids())
    max_len = {"stuck": 60}
    ret, _ = normalised_return_targets(table, max_len, None)
    # past tick 25 a hand still near 0 is a failure for sure (successes have left by then): only the
    # time tells how much of the episode, hence of the return, is left
    failed = (np.asarray(table.outcomes) == "failure")[table.episode_index] & (table.tick >= 25)
    rho = {}
    for time_input in (False, True):
        cfg = ValueConfig(state_dim=2, hidden=64, steps=400, batch_size=128, dropout=0.0, ensemble=1, lr=2e-3,
                          time_input=time_input)
        vf, sstats, _ = fit_value(table, cfg, max_len=max_len, progress=False)
        v = predict_values(vf, table, sstats, max_len=max_len)
        rho[time_input] = correlations(v[failed], ret[failed])["pearson"]
    # the return of a stuck tick rises to -0.5 with time; a time-blind V sees one state
    assert rho[False] < 0.5 and rho[True] > 0.9, rho
    with pytest.raises(ValueError, match="time limits"):
        predict_values(vf, table, sstats)


def _batch(table, sstats, max_len):
    from training.value.trainer_value import elapsed_fraction, make_batch

    return make_batch(table, np.arange(len(table)), sstats, torch.device("cpu"), elapsed_fraction(table, max_len))


def test_training_run_writes_verified_artifacts_with_lineage_and_resumes(tmp_path):
    store = _toy_store(tmp_path / "s")
    cat = Catalog.for_store(store)
    cat.register_many(store)
    spec = RunSpec(run_id="r1", method=Method.RECAP, selection={"task": "reach"},
                   recap=recap.RecapConfig(advantage_horizon=10),
                   value={"hidden": 32, "steps": 60, "batch_size": 64},
                   policy={"hidden": 32, "steps": 60, "batch_size": 64, "chunk": 4}, parent_version="v0")
    res = run_training(store, cat, spec, tmp_path / "runs", progress=False)
    man = verify_artifact(res.policy_dir)
    assert man["kind"] == "policy" and man["lineage"]["parent_version"] == "v0"
    assert man["lineage"]["episodes"] == 16 and man["lineage"]["method"] == "recap"
    sel = json.loads((res.run_dir / "episodes.json").read_text())
    assert sorted(sel["episodes"]) == store.episode_ids() and len(sel["checksums"]) == 16
    assert (res.run_dir / "curves.png").stat().st_size > 1000
    assert (res.run_dir / "labels" / "advantages.safetensors").exists()
    assert 0 < res.metrics["positive_rate"] < 1

    policy, manifest = load_policy(res.policy_dir)
    assert policy.type == "native_flow" and policy.beta == 1.0
    obs = [Observation(np.zeros(3, np.float32), {}, "reach the goal", seed) for seed in (0, 1)]
    out = policy.predict_chunk(obs, beta=2.0)
    assert out.shape == (2, 4, 2) and np.isfinite(out).all()
    assert np.allclose(policy.predict_chunk(obs[:1], beta=2.0)[0], out[0], atol=1e-5)  # the seed decides, not the batch

    # deterministic for a seed: a second run with the same spec gives identical weights
    res2 = run_training(store, cat, RunSpec(**{**spec.__dict__, "run_id": "r2"}), tmp_path / "runs", progress=False)
    assert manifest["files"]["model.safetensors"] == verify_artifact(res2.policy_dir)["files"]["model.safetensors"]

    # resume: a run whose policy phase crashed restarts from its saved value function and labels
    (res.run_dir / "done.json").unlink()
    import shutil
    shutil.rmtree(res.policy_dir)
    vmtime = (res.run_dir / "value" / "model.safetensors").stat().st_mtime_ns
    res3 = run_training(store, cat, spec, tmp_path / "runs", progress=False)
    assert (res.run_dir / "value" / "model.safetensors").stat().st_mtime_ns == vmtime
    assert verify_artifact(res3.policy_dir)["files"]["model.safetensors"] == manifest["files"]["model.safetensors"]

    # a tampered artifact is refused, naming the file
    p = res3.policy_dir / "stats.json"
    p.write_text(p.read_text().replace("0", "1", 1))
    with pytest.raises(ArtifactError, match="stats.json"):
        load_policy(res3.policy_dir)


def test_run_labels_export_as_lerobot_columns(tmp_path):
    import subprocess
    import sys

    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    store = _toy_store(tmp_path / "s", n=6)
    cat = Catalog.for_store(store)
    cat.register_many(store)
    spec = RunSpec(run_id="lab", method=Method.RECAP, recap=recap.RecapConfig(advantage_horizon=5),
                   value={"hidden": 16, "steps": 10, "batch_size": 32}, policy={"hidden": 16, "steps": 5, "chunk": 2})
    res = run_training(store, cat, spec, tmp_path / "runs", progress=False)
    out = tmp_path / "lr"
    p = subprocess.run([sys.executable, "-m", "data.cli_root", "train", "export", str(res.run_dir), str(out),
                        "--store", str(store.root)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    labels = AdvantageLabels.load(res.run_dir / "labels")
    ds = LeRobotDataset("local/labels", root=out)
    assert len(ds) == len(labels.indicators)
    for i in (0, 7, len(ds) - 1):
        assert float(ds[i]["advantage_indicator"]) == float(labels.indicators[i])
        assert abs(float(ds[i]["advantage"]) - float(labels.advantages[i])) < 1e-6


def test_a_stretch_marked_as_a_bad_correction_leaves_only_its_ticks_out_of_training(tmp_path):
    """Catalog.select_for_training -> episodes.json -> the step table -> the policy's samples and targets:
    the marked ticks are neither, the rest of the episode is trained on; the reason is in the lineage."""
    store = _toy_store(tmp_path / "s", n=6)
    cat = Catalog.for_store(store)
    cat.register_many(store)
    ids = store.episode_ids()
    corrected = next(e for e in ids if (store.open(e).action_source == ActionSource.CORRECTION).any())
    cat.annotate(corrected, "bad_correction", 3, 5, "drove into the table", author="reviewer")
    spec = RunSpec(run_id="masked", method=Method.HG_DAGGER, policy={"hidden": 16, "steps": 5, "chunk": 4})
    res = run_training(store, cat, spec, tmp_path / "runs", progress=False)
    sel = json.loads((res.run_dir / "episodes.json").read_text())
    why = "bad correction at ticks 3-5 marked by reviewer: drove into the table"
    assert corrected in sel["episodes"] and sel["excluded"] == {}
    assert sel["masked"] == {corrected: [{"start_tick": 3, "end_tick": 5, "why": why}]}
    assert verify_artifact(res.policy_dir)["lineage"]["masked"] == sel["masked"] and res.metrics["masked_ticks"] == 3
    # demonstrations + corrections, less the three marked correction ticks
    whole = policy_data(load_steps(store, sel["episodes"]), Method.HG_DAGGER)
    assert res.metrics["policy_ticks"] == len(whole.index) - 3
    table = load_steps(store, sel["episodes"], masked=sel["masked"])
    e = sel["episodes"].index(corrected)
    start = int(table.starts[e])
    kept = policy_data(table, Method.HG_DAGGER).index
    assert not set(range(start + 3, start + 6)) & set(kept) and set(whole.index) - set(kept) == set(range(start + 3, start + 6))
    # a tick before the stretch keeps its own action as a target, never the marked ones
    _, pad = table.action_chunks(np.array([start + 1]), 4)
    assert pad.tolist() == [[False, False, True, True]]


def test_policy_training_resumes_exactly_from_its_last_checkpoint(tmp_path):
    from training.policies.native import NativePolicyConfig
    from training.policies.trainer_policy import fit_policy

    store = _toy_store(tmp_path / "s", n=6)
    table = load_steps(store, store.episode_ids())
    data = policy_data(table, Method.HG_DAGGER)
    cfg = NativePolicyConfig(state_dim=3, action_dim=2, chunk=4, hidden=32, steps=40, batch_size=32)
    straight, losses = fit_policy(table, data, cfg, progress=False)
    ck = tmp_path / "ck"
    fit_policy(table, data, cfg, progress=False, checkpoint_dir=ck, checkpoint_every=10, stop_after=25)  # "crash"
    resumed, losses2 = fit_policy(table, data, cfg, progress=False, checkpoint_dir=ck, checkpoint_every=10)
    assert losses2 == losses
    assert all(torch.equal(a, b) for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()))


def test_a_batch_of_all_zero_weights_teaches_nothing_instead_of_nan(tmp_path):
    """AWR far below its best ticks (or a tiny negative_weight) can weigh a whole batch ~0: the weighted mean
    must stay finite, or one batch would put NaN into every weight of the saved policy."""
    from training.methods import PolicyData
    from training.policies.native import NativePolicyConfig
    from training.policies.trainer_policy import fit_policy

    store = _toy_store(tmp_path / "s", n=4)
    table = load_steps(store, store.episode_ids())
    idx = policy_data(table, Method.HG_DAGGER).index
    data = PolicyData(idx, np.full(len(idx), recap.INDICATOR_POSITIVE, np.int64), np.zeros(len(idx), np.float32))
    cfg = NativePolicyConfig(state_dim=3, action_dim=2, chunk=4, hidden=16, steps=3, batch_size=8)
    policy, losses = fit_policy(table, data, cfg, progress=False)
    assert losses == [0.0] * 3
    assert all(torch.isfinite(p).all() for p in policy.model.parameters())


@pytest.mark.slow
def test_an_awr_run_trains_a_lerobot_diffusion_policy_state_only(tmp_path):
    """The product's path for a LeRobot backbone: a recipe naming lerobot:diffusion, AWR weights in
    its loss, a verified artifact that loads and predicts chunks of the served length."""
    store = _toy_store(tmp_path / "s", n=6)
    cat = Catalog.for_store(store)
    cat.register_many(store)
    spec = RunSpec(run_id="dp", method=Method.AWR, recap=recap.RecapConfig(advantage_horizon=5),
                   value={"hidden": 16, "steps": 10, "batch_size": 32},
                   policy={"type": "lerobot:diffusion", "horizon": 8, "n_action_steps": 4, "down_dims": [16, 32],
                           "kernel_size": 3, "n_groups": 4, "diffusion_step_embed_dim": 16, "num_inference_steps": 3,
                           "steps": 5, "batch_size": 16})
    res = run_training(store, cat, spec, tmp_path / "runs", progress=False)
    assert np.isfinite(res.metrics["policy_final_loss"])
    policy, _ = load_policy(res.policy_dir)
    assert policy.type == "lerobot:diffusion" and policy.chunk == 4
    out = policy.predict_chunk([Observation(np.zeros(3, np.float32), {}, "reach the goal", 0)])
    assert out.shape == (1, 4, 2) and np.isfinite(out).all()


def test_a_run_reports_held_out_calibration_and_its_guard_rail_stops_or_falls_back(tmp_path):
    from training.runs import WeakValueError

    store = _toy_store(tmp_path / "s", n=12)
    cat = Catalog.for_store(store)
    cat.register_many(store)
    small = dict(value={"hidden": 16, "steps": 20, "batch_size": 32}, policy={"hidden": 16, "steps": 5, "chunk": 2})
    policy_ticks = int((load_steps(store, store.episode_ids()).source == ActionSource.POLICY).sum())

    # the first labelled fit: 30 % of the policy's ticks positive; the budget follows the data
    spec = RunSpec(run_id="first", first_labelled=True, **small,
                   recap=recap.RecapConfig(advantage_horizon=5, policy_epochs=2.0))
    m = run_training(store, cat, spec, tmp_path / "runs", progress=False).metrics
    assert m["positive_fraction_target"] == 0.3 and abs(m["positive_rate_policy_ticks"] - 0.3) < 0.05
    assert m["value_calibration"]["held_out"] and -1 <= m["value_calibration"]["spearman"] <= 1
    assert np.isfinite(m["value_calibration"]["pearson"]) and m["value_calibration"]["ticks"] == m["ticks"]
    assert len(m["positive_rate_failed_by_quarter"]) == 4
    assert m["positive_rate_failed_last_quarter"] == m["positive_rate_failed_by_quarter"][-1]
    # where the positives come from: the groups add up to the run's ticks and positives
    by = m["positives_by_source"]
    assert set(by) == {"demonstration", "correction", "policy_success", "policy_failure"}
    assert sum(g["ticks"] for g in by.values()) == m["ticks"] and by["policy_success"]["ticks"] + by["policy_failure"]["ticks"] == policy_ticks
    assert abs(sum(g["share_of_positives"] for g in by.values()) - 1) < 1e-9
    assert abs(sum(g["positive_rate"] * g["ticks"] for g in by.values() if g["ticks"]) / m["ticks"] - m["positive_rate"]) < 1e-9
    usable = m["ticks"]  # the toy has no hold ticks
    assert m["policy_steps"] == max(5, int(np.ceil(2.0 * usable / 256))) and policy_ticks > 0

    # below the recipe's bar: stop before labelling, with a message saying why and what to do
    bar = recap.RecapConfig(advantage_horizon=5, min_value_corr=0.999)
    with pytest.raises(WeakValueError, match=r"held-out Spearman correlation .* below recap.min_value_corr 0.999"):
        run_training(store, cat, RunSpec(run_id="stop", recap=bar, **small), tmp_path / "runs", progress=False)
    assert not (tmp_path / "runs" / "stop" / "labels").exists()
    # ... or, where the recipe allows, train success-filtered BC and say so in the lineage
    fb = RunSpec(run_id="fallback", recap=recap.RecapConfig(advantage_horizon=5, min_value_corr=0.999,
                                                             on_weak_value="filtered_bc", cfg_beta=2.0), **small)
    res = run_training(store, cat, fb, tmp_path / "runs", progress=False)
    lineage = verify_artifact(res.policy_dir)["lineage"]
    assert lineage["method"] == "recap" and lineage["trained_as"] == "filtered_bc"
    assert lineage["value_guard"]["fallback"] == "filtered_bc" and "0.999" in lineage["value_guard"]["reason"]
    assert load_policy(res.policy_dir)[0].beta == 1.0  # no guidance for a policy trained without indicators
    filtered = policy_data(load_steps(store, store.episode_ids()), Method.FILTERED_BC)
    assert res.metrics["policy_ticks"] == len(filtered.index)


def test_value_command_fits_reports_and_labels_at_the_capped_share(tmp_path):
    """`recap train value`: V fitted on the selection minus a held-out share, its calibration written, the
    selection labelled, with --positive-cap success_rate lowering the asked-for share to the policy's success rate."""
    import json
    import subprocess
    import sys

    from data.catalog import Catalog

    store = _toy_store(tmp_path / "s", n=12)
    Catalog.for_store(store).register_many(store)
    out = tmp_path / "v"
    cmd = [sys.executable, "-m", "data.cli_root", "train", "value", str(out), "--store", str(store.root),
           "--steps", "30", "--hidden", "32", "--positive-fraction", "0.9", "--positive-cap", "success_rate"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert json.loads((out / "calibration.json").read_text())["ticks"] > 0 and (out / "calibration.png").exists()
    labels = AdvantageLabels.load(out / "labels")
    table = load_steps(store, labels.episode_ids)
    ran = np.unique(table.episode_index[table.source == ActionSource.POLICY])
    rate = float((np.asarray(table.outcomes)[ran] == "success").mean())
    assert 0 < rate < 0.9 and labels.positive_fraction == 0.9 and labels.fractions == {"reach": pytest.approx(rate)}
