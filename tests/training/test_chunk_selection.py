"""Value-guided chunk selection: a chunk critic Q(o, t, chunk) trained by the run on its own selection,
saved in the policy's verified artifact, and used by the policy's contract (the simulated arm's actor
and the inference server's runtime alike) to execute the best of K sampled chunks."""

import hashlib

import numpy as np
import pytest

from data.catalog import Catalog
from data.schema import ActionSource, EpisodeFeatures, Outcome, Tick
from data.store import EpisodeStore
from training import recap
from training.artifacts import ArtifactError, verify_artifact
from training.methods import Method
from training.policies.policy import Observation, candidate_seeds
from training.recipe import RecipeError, check_recipe
from training.runs import RunSpec, load_policy, run_training

T0 = 1_700_000_000_000_000_000
L = 40


def _two_way_store(root, n=24):
    """One state for every episode (noise), two ways to act: pushing +1 succeeds in 12-17 ticks, pulling
    -1 times out at L. Neither the state nor the instruction tells them apart: only the chunk does."""
    store = EpisodeStore(root)
    feats = EpisodeFeatures(state_dim=2, action_dim=1)
    rng = np.random.default_rng(0)
    for i in range(n):
        push = i % 2 == 0
        T = int(rng.integers(12, 18)) if push else L
        w = store.new_episode(robot_id="toy", task_id="push", features=feats, fps=10, instruction="push it",
                              fsync=False, start_time_ns=T0 + i * 10**12)
        for t in range(T):
            state = np.array([rng.normal(0, 0.1), 1.0], np.float32)
            action = np.array([(1.0 if push else -1.0) + 0.1 * rng.normal()], np.float32)
            w.append(Tick(T0 + i * 10**12 + t * 10**8, state, action, ActionSource.DEMONSTRATION))
        w.commit(Outcome.SUCCESS if push else Outcome.FAILURE, "detector")
    return store


def _run(tmp_path, select: int):
    store = _two_way_store(tmp_path / "s")
    cat = Catalog.for_store(store)
    cat.register_many(store)
    spec = RunSpec(run_id=f"bc-k{select}", method=Method.BC, selection={"task": "push"},
                   recap=recap.RecapConfig(select_chunks=select), task_max_len={"push": L},
                   value={"hidden": 32, "steps": 300, "batch_size": 128, "ensemble": 2, "lr": 3e-3, "dropout": 0.0},
                   policy={"hidden": 32, "steps": 300, "batch_size": 128, "chunk": 4, "lr": 3e-3})
    return run_training(store, cat, spec, tmp_path / "runs", progress=False)


@pytest.mark.slow
def test_the_critic_ranks_chunks_and_selection_executes_the_better_way(tmp_path):
    res = _run(tmp_path, 8)
    man = verify_artifact(res.policy_dir)
    assert {"critic.safetensors", "critic.json"} <= set(man["files"])  # sha256 in the manifest like every file
    assert not any(p.suffix in (".pt", ".pkl", ".bin") for p in res.policy_dir.iterdir())
    critic_metrics = man["metrics"]["chunk_critic"]
    assert critic_metrics["select_chunks"] == 8 and critic_metrics["calibration"]["held_out"]
    # out of fold, Q of the executed chunk tells the pushes' returns from the pulls'
    assert critic_metrics["calibration"]["spearman"] > 0.5, critic_metrics
    assert man["lineage"]["recap"]["select_chunks"] == 8

    policy, _ = load_policy(res.policy_dir)
    assert policy.select_chunks == 8 and policy.critic is not None
    obs = [Observation(np.array([0.05 * np.sin(i), 1.0], np.float32), {}, "push it", 1000 + i, tick=i % 30)
           for i in range(64)]
    plain = policy.predict_chunk(obs, select=0)
    chosen = policy.predict_chunk(obs)  # the artifact's K
    pushes_plain, pushes_chosen = (plain.mean((1, 2)) > 0).mean(), (chosen.mean((1, 2)) > 0).mean()
    # the BC policy samples both ways; the critic's pick is the push far above chance (a perfect ranking
    # misses only when none of the 8 candidates pushes: (1 - p)^8, 6 % at p = 0.3)
    assert 0.15 < pushes_plain < 0.85, pushes_plain
    assert pushes_chosen >= 0.85 and pushes_chosen > pushes_plain + 0.3, (pushes_plain, pushes_chosen)
    # K = 1 is plain sampling (the first candidate is the observation's own seed); the choice is
    # deterministic in the seed, batched or not, with or without the tick
    assert candidate_seeds(7, 3)[0] == 7 and len(set(candidate_seeds(7, 3))) == 3
    assert np.allclose(policy.predict_chunk(obs, select=1), plain, atol=1e-6)
    assert np.allclose(policy.predict_chunk(obs[:3]), chosen[:3], atol=1e-5)
    blind = [Observation(o.state, {}, o.instruction, o.seed) for o in obs]
    assert (policy.predict_chunk(blind).mean((1, 2)) > 0).mean() >= 0.85

    # the simulated arm's actor goes through the same contract, with the episode's tick
    from training.sim.collect import PolicyActor

    actor = PolicyActor(policy, "push it", seed=3)
    picks = []
    for t in range(16):
        picks.append(actor.predict(np.array([0.0, 1.0], np.float32)).mean() > 0)
        actor.observe(np.array([0.0, 1.0], np.float32))
    assert actor.observation(np.zeros(2, np.float32)).tick == 16 and np.mean(picks) >= 0.75

    # the inference server's path: a request (with its tick) parsed against the spec, the runtime answers
    from services.inference.runtime import PolicyRuntime
    from services.inference.wire import decode_request, encode_request, parse_observation

    digest = hashlib.sha256((res.policy_dir / "manifest.json").read_bytes()).hexdigest()
    rt = PolicyRuntime("v1", res.policy_dir, digest)
    assert rt.select_chunks == 8
    req = decode_request(encode_request(np.array([0.0, 1.0], np.float32), {}, "push it", seed=1000, tick=0), True)
    o = parse_observation(req, rt.spec)
    assert o.tick == 0
    assert np.allclose(rt.act([o]), chosen[:1], atol=1e-5)
    assert np.allclose(PolicyRuntime("v1", res.policy_dir, select_chunks=0).act([o]), plain[:1], atol=1e-5)

    # a tampered critic is refused before anything is loaded
    p = res.policy_dir / "critic.json"
    p.write_text(p.read_text().replace('"select_chunks": 8', '"select_chunks": 9'))
    with pytest.raises(ArtifactError, match="critic.json"):
        load_policy(res.policy_dir)


def test_a_bad_select_chunks_is_refused_at_the_door():
    assert check_recipe({"recap": {"select_chunks": 4}})["recap"] == {"select_chunks": 4}
    for recipe, words in (({"recap": {"select_chunks": 65}}, "recap.select_chunks"),
                          ({"recap": {"select_chunks": -1}}, "recap.select_chunks"),
                          ({"recap": {"select_chunks": "many"}}, "recap.select_chunks"),
                          ({"policy": {"type": "lerobot:act"}, "recap": {"select_chunks": 4}}, "native_flow")):
        with pytest.raises(RecipeError, match=words):
            check_recipe(recipe)
    # the API's request schema: the same check, a 422 naming the field
    from pydantic import ValidationError

    from services.api.schemas import RunCreate

    with pytest.raises(ValidationError, match="recap.select_chunks"):
        RunCreate.model_validate({"recipe": {"policy": {"type": "lerobot:act"}, "recap": {"select_chunks": 4}}})
    with pytest.raises(ValidationError, match="select_chunks"):
        RunCreate.model_validate({"recipe": {"recap": {"select_chunks": 1000}}})
    # and a run given one directly (a library caller) stops before it selects anything
    with pytest.raises(RecipeError, match="native_flow"):
        run_training(None, None, RunSpec(run_id="x", policy={"type": "lerobot:act"},
                                         recap=recap.RecapConfig(select_chunks=4)), "/nonexistent")
