"""Policy types through the product path: a recipe selects the type and is checked at the door, every
section of it (a bad field is a 422 naming it); a LeRobot ACT backbone trains on the worker, registers, deploys and
answers /v1/act; the simulated arm's policy path and the running inference server give the same
chunk for one observation and one noise seed (same processing, same β from the artifact)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict

import httpx
import numpy as np
import pytest

from data.schema import Outcome
from data.stats import FeatureStats
from data.store import EpisodeStore
from services.inference.wire import MSGPACK, decode_answer, encode_request
from tests.services.conftest import running_stack
from tests.store.helpers import T0, record
from training.recap_config import RecapConfig

ACT = {"type": "lerobot:act", "chunk_size": 4, "dim_model": 16, "n_heads": 2, "dim_feedforward": 32,
       "n_encoder_layers": 1, "n_decoder_layers": 1, "use_vae": False, "vision_backbone": "resnet18",
       "steps": 3, "batch_size": 4}


@pytest.fixture(scope="module")
def served_stack(tmp_path_factory):
    """One stack with a worker and an inference server for the tests that train a LeRobot type from the
    API and ask the server: each registers, deploys and asks its own version."""
    with running_stack(tmp_path_factory.mktemp("types")) as stack:
        stack.start_worker("worker")
        yield stack, stack.start_inference()


def _wait(url: str, pred, timeout: float = 120.0, headers=None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = httpx.get(url, headers=headers).json()
        if pred(got):
            return got
        time.sleep(0.2)
    raise AssertionError(f"never reached the state: {got}")


def _sim_chunk(artifact_dir, state, images, instruction, seed) -> tuple[np.ndarray, int]:
    """The simulated evaluation's policy path: the artifact loaded as the loop loads it, one PolicyActor."""
    from training.runs import load_policy
    from training.sim.collect import PolicyActor

    policy, _ = load_policy(artifact_dir)
    actor = PolicyActor(policy, instruction, seed=seed)
    obs = actor.observation(state, images)
    return policy.predict_chunk([obs], actor.indicator, actor.beta)[0], obs.seed


def _post_act(url: str, token: str, state, images, instruction: str, seed: int, history=()) -> httpx.Response:
    return httpx.post(url + "/v1/act", content=encode_request(state, images, instruction, seed=seed, history=history),
                      headers={"Authorization": f"Bearer {token}", "Content-Type": MSGPACK}, timeout=60)


def _act(url: str, token: str, state, images, instruction: str, seed: int, history=()) -> np.ndarray:
    r = _post_act(url, token, state, images, instruction, seed, history)
    assert r.status_code == 200, r.text
    return decode_answer(r.content, binary=True)["actions"]


def test_a_bad_policy_recipe_is_a_422_naming_the_field_at_the_api_and_the_cli(stack):
    store = EpisodeStore(stack.settings.store_root)
    ep, _ = record(store, robot="robot-0", cameras=1, ticks=12)
    with stack.client("robot") as c:
        assert c.post("/v1/episodes/register", json={"episode_id": ep.episode_id}).status_code == 200
    with stack.client("researcher") as c:
        for policy, field in (({"type": "pi05"}, "type"), ({"type": "lerobot:act", "chunk_sise": 4}, "chunk_sise"),
                              ({"type": "lerobot:act", "dim_model": 2.5}, "dim_model"), ({"chunk": "x"}, "chunk"),
                              ({"state_dim": 3}, "state_dim")):
            r = c.post("/v1/runs", json={"selection": {"robot": ["robot-0"]}, "recipe": {"policy": policy}})
            assert r.status_code == 422 and field in r.text and "Traceback" not in r.text, (policy, r.text)
        # every other section too: a bad key, a value of the wrong type, out of range, set by the run, not finite
        for recipe, field in (({"recap": {"advantage_horizn": 4}}, "recap.advantage_horizn"),
                              ({"recap": {"advantage_horizon": 0}}, "recap.advantage_horizon"),
                              ({"recap": {"positive_fraction_later": 1.5}}, "recap.positive_fraction_later"),
                              ({"recap": {"cfg_beta": 11}}, "recap.cfg_beta"),
                              ({"recap": {"positive_fraction_cap": "successes"}}, "recap.positive_fraction_cap"),
                              ({"value": {"hidden": "wide"}}, "value.hidden"),
                              ({"value": {"backbone": "gpt"}}, "value.backbone"),
                              ({"value": {"num_bins": 5}}, "value.num_bins"),
                              ({"policy": {"chunk": 0}}, "chunk"),
                              ({"policy": {"type": "lerobot:act", "dim_model": -3}}, "dim_model"),
                              ({"policy": {"type": "lerobot:act", "dim_model": 0}}, "dim_model"),
                              ({"policy": {"type": "lerobot:act", "n_heads": 0}}, "n_heads"),
                              ({"policy": {"type": "lerobot:smolvla", "prefix_length": -2}}, "prefix_length"),
                              ({"policy": {"type": "lerobot:act", "n_obs_steps": 2}}, "n_obs_steps"),
                              ({"policy": {"type": "lerobot:diffusion", "n_obs_steps": 0}}, "n_obs_steps"),
                              ({"policy": {"type": "lerobot:diffusion", "n_obs_steps": 3, "horizon": 8,
                                           "n_action_steps": 8}}, "n_action_steps"),
                              ({"recap": {"select_chunks": 65}}, "recap.select_chunks"),
                              ({"policy": {"type": "lerobot:act"}, "recap": {"select_chunks": 4}}, "recap.select_chunks"),
                              ({"task_max_len": {"push": 0}}, "task_max_len"),
                              ({"epochs": 3}, "epochs")):
            r = c.post("/v1/runs", json={"selection": {"robot": ["robot-0"]}, "recipe": recipe})
            assert r.status_code == 422 and field in r.text and "Traceback" not in r.text, (recipe, r.text)
        for raw in ('{"recap": {"cfg_beta": NaN}}', '{"recap": {"c_fail": Infinity}}', '{"value": {"lr": 1e999}}'):
            r = c.post("/v1/runs", content=f'{{"selection": {{"robot": ["robot-0"]}}, "recipe": {raw}}}',
                       headers={"Content-Type": "application/json"})
            assert r.status_code == 422 and raw.split('"')[3] in r.text, (raw, r.text)
        assert c.get("/v1/runs").json() == []  # nothing queued
        ok = c.post("/v1/runs", json={"method": "bc", "selection": {"robot": ["robot-0"]},
                                      "recipe": {"policy": {"type": "lerobot:act", "chunk_size": 4}}})
        assert ok.status_code == 202 and ok.json()["spec"]["recipe"]["policy"] == {"type": "lerobot:act", "chunk_size": 4}
    p = subprocess.run([sys.executable, "-m", "data.cli_root", "runs", "start", "--api", stack.api.url,
                        "--token", stack.tokens["researcher"], "--recipe", '{"policy": {"type": "lerobot:act", "dim_modle": 8}}'],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "dim_modle" in p.stderr and "Traceback" not in p.stderr, p.stderr
    p = subprocess.run([sys.executable, "-m", "data.cli_root", "runs", "start", "--api", stack.api.url,
                        "--token", stack.tokens["researcher"], "--recipe", '{"recap": {"advantage_horizon": -1}}'],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "recap.advantage_horizon: Input should be greater than or equal to 1" in p.stderr, p.stderr
    p = subprocess.run([sys.executable, "-m", "data.cli_root", "runs", "start", "--api", stack.api.url,
                        "--token", stack.tokens["researcher"], "--recipe",
                        '{"policy": {"type": "lerobot:act"}, "recap": {"select_chunks": 4}}'],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "recap.select_chunks" in p.stderr, p.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_lerobot_act_run_from_the_api_trains_registers_deploys_and_answers_like_the_sim_path(served_stack):
    stack, inf = served_stack
    store = EpisodeStore(stack.settings.store_root)
    with stack.client("robot") as c:
        for i in range(4):
            ep, _ = record(store, robot="robot-0", cameras=1, ticks=16, corrections=range(4, 8) if i % 2 else range(0),
                           outcome=Outcome.SUCCESS if i % 2 else Outcome.FAILURE, start=T0 + i * 10**12)
            assert c.post("/v1/episodes/register", json={"episode_id": ep.episode_id}).status_code == 200
    cam = ep.cameras[0]
    recipe = {"policy": ACT, "value": {"steps": 3, "hidden": 16, "batch_size": 16},
              "recap": {"advantage_horizon": 4, "cfg_beta": 1.5}, "cameras": [cam]}
    with stack.client("researcher") as c:
        r = c.post("/v1/runs", json={"method": "recap", "selection": {"robot": ["robot-0"]}, "recipe": recipe})
        assert r.status_code == 202, r.text
        run_id = r.json()["id"]
    hdr = {"Authorization": f"Bearer {stack.tokens['researcher']}"}
    run = _wait(f"{stack.api.url}/v1/runs/{run_id}", lambda x: x["status"] not in ("queued", "running"), 600, hdr)
    assert run["status"] == "finished", run
    with stack.client("researcher") as c:
        v = c.get(f"/v1/versions/{run['version_id']}").json()
        assert v["policy_type"] == "lerobot:act", v
        logs = c.get(f"/v1/runs/{run_id}/logs").text
        assert "policy lerobot:act" in logs  # the type's config, printed
        # the effective recipe, every section with its defaults filled in, printed at the start
        line = next(x for x in logs.splitlines() if "recipe with defaults" in x)
        printed = json.loads(line.split("recipe with defaults ", 1)[1])
        assert printed["recap"] == {**asdict(RecapConfig()), "advantage_horizon": 4, "cfg_beta": 1.5}
        assert printed["value"]["steps"] == 3 and printed["value"]["ensemble"] == 4 and "num_bins" not in printed["value"]
        assert printed["policy"]["type"] == "lerobot:act" and printed["policy"]["lr"] == 1e-4
    with stack.client("operator") as c:
        assert c.post("/v1/deployments", json={"version": v["id"]}).status_code == 201
    _wait(inf.url + "/v1/serving", lambda s: v["id"] in s["versions"] and s["fleet_version"] == v["id"])
    rng = np.random.default_rng(5)
    state, images = rng.normal(size=4).astype(np.float32), {cam: rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)}
    local, seed = _sim_chunk(v["artifact_dir"], state, images, "push it", seed=11)
    served = _act(inf.url, stack.tokens["robot"], state, images, "push it", seed)
    assert served.shape == (4, 3) and np.allclose(served, local, atol=1e-4)
    from training.runs import load_policy

    assert load_policy(v["artifact_dir"])[0].beta == 1.5  # the run's β travels in the artifact


def test_the_simulated_policy_path_and_the_inference_server_give_the_same_guided_chunk(stack, tmp_path):
    """A native flow policy with β = 2 in its artifact: guidance (two passes) and the noise seed, both ways.
    Then a deployment that overrides β (from the CLI): the server answers with exactly that β, the
    deployment, its audit row and the serving state record it; a rollback and a re-deploy without β
    go back to the artifact's."""
    import torch

    from training.policies.native import NativePolicyConfig
    from training.policies.policy import Observation, Policy

    torch.manual_seed(0)
    cfg = NativePolicyConfig(state_dim=4, action_dim=3, chunk=4, hidden=32, flow_steps=4, cameras=["top"],
                             image_size=(48, 64), cfg_beta=2.0)
    rng = np.random.default_rng(0)
    stats = {"observation.state": FeatureStats.of(rng.normal(size=(64, 4))),
             "action": FeatureStats.of(rng.normal(size=(64, 3)))}
    Policy("native_flow", cfg, stats).save(tmp_path / "p", lineage={"run": "handmade"})
    with stack.client("researcher") as c:
        vid = c.post("/v1/versions", json={"artifact_dir": str(tmp_path / "p")}).json()["id"]
    with stack.client("operator") as c:
        assert c.post("/v1/deployments", json={"version": vid}).status_code == 201
    inf = stack.start_inference()
    _wait(inf.url + "/v1/serving", lambda s: vid in s["versions"])
    state, images = rng.normal(size=4).astype(np.float32), {"top": rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)}
    local, seed = _sim_chunk(tmp_path / "p", state, images, "push it", seed=3)
    served = _act(inf.url, stack.tokens["robot"], state, images, "push it", seed)
    assert np.allclose(served, local, atol=1e-5)
    from training.runs import load_policy

    policy = load_policy(tmp_path / "p")[0]
    unguided = policy.predict_chunk([Observation(state, images, "push it", seed)], beta=1.0)[0]
    assert not np.allclose(served, unguided, atol=1e-3)  # β = 2 is what was served, not β = 1

    # a per-deployment β: refused unless finite and in [0, 10], at the API and the CLI
    with stack.client("operator") as c:
        for bad in (11, -0.5, "strong", True):
            r = c.post("/v1/deployments", json={"version": vid, "beta": bad})
            assert r.status_code == 422 and "beta" in r.text, (bad, r.text)
        r = c.post("/v1/deployments", content=f'{{"version": "{vid}", "beta": NaN}}',
                   headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and "beta" in r.text, r.text
    cli = [sys.executable, "-m", "data.cli_root", "fleet", "deploy", vid, "--api", stack.api.url,
           "--token", stack.tokens["operator"]]
    p = subprocess.run(cli + ["--beta", "inf"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "--beta" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    p = subprocess.run(cli + ["--beta", "0.5"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and json.loads(p.stdout)["beta"] == 0.5, p.stdout + p.stderr

    def served_at(beta_served: float) -> np.ndarray:
        state_now = _wait(inf.url + "/v1/serving", lambda s: s["betas"].get("robot-0") == beta_served)
        assert state_now["versions"][vid]["artifact_beta"] == 2.0
        return _act(inf.url, stack.tokens["robot"], state, images, "push it", seed)

    direct = policy.predict_chunk([Observation(state, images, "push it", seed)], beta=0.5)[0]
    assert np.allclose(served_at(0.5), direct, atol=1e-5) and not np.allclose(direct, local, atol=1e-3)
    with stack.client("operator") as c:
        api_state = c.get("/v1/deployments/serving").json()
        assert api_state["betas"]["robot-0"] == 0.5 and api_state["fleet_beta"] == 0.5
        assert c.get("/v1/deployments").json()[0]["beta"] == 0.5
        # a rollback restores what ran before: the same version at the artifact's β
        r = c.post("/v1/deployments/rollback", json={})
        assert r.status_code == 201 and r.json()["beta"] is None and r.json()["note"] == f"rollback from {vid} at beta 0.5"
        assert np.allclose(served_at(2.0), local, atol=1e-5)
        assert c.post("/v1/deployments", json={"version": vid, "beta": 0.5}).status_code == 201
        assert np.allclose(served_at(0.5), direct, atol=1e-5)
        assert c.post("/v1/deployments", json={"version": vid}).status_code == 201  # no β: the artifact's again
        assert np.allclose(served_at(2.0), local, atol=1e-5)
        assert c.get("/v1/deployments/serving").json()["betas"]["robot-0"] is None
    with stack.client("admin") as c:
        audit = c.get("/v1/audit", params={"limit": 10_000}).json()  # newest first
        deployed = [a["detail"] for a in audit if a["action"] == "POST /v1/deployments" and a["status"] == 201]
        assert [(d["version"], d["beta"]) for d in deployed] == [(vid, None), (vid, 0.5), (vid, 0.5), (vid, None)]
        rolled = [a["detail"] for a in audit if a["action"] == "POST /v1/deployments/rollback"]
        assert [(d["version"], d["beta"]) for d in rolled] == [(vid, None)]


DIFFUSION_2 = {"type": "lerobot:diffusion", "n_obs_steps": 2, "horizon": 8, "n_action_steps": 4, "down_dims": [16, 32],
               "kernel_size": 3, "n_groups": 4, "diffusion_step_embed_dim": 16, "num_inference_steps": 4,
               "spatial_softmax_num_keypoints": 4, "use_group_norm": True, "steps": 3, "batch_size": 4}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_diffusion_policy_reading_two_ticks_trains_from_a_recipe_and_is_served_like_the_sim_path(served_stack):
    """lerobot:diffusion with n_obs_steps = 2 from the API: the worker trains it on two-tick windows, it
    registers and deploys; the server's spec says it reads 2 ticks; a request carrying the tick before
    (`history`) is answered with the chunk the simulated robot's policy path computes from the same
    sequence of observations and seed; a request without that history is a 422 naming it."""
    stack, inf = served_stack
    store = EpisodeStore(stack.settings.store_root)
    with stack.client("robot") as c:
        for i in range(3):
            ep, _ = record(store, robot="robot-0", cameras=1, ticks=12, start=T0 + i * 10**12)
            assert c.post("/v1/episodes/register", json={"episode_id": ep.episode_id}).status_code == 200
    cam = ep.cameras[0]
    with stack.client("researcher") as c:
        r = c.post("/v1/runs", json={"method": "filtered_bc", "selection": {"robot": ["robot-0"]},
                                     "recipe": {"policy": DIFFUSION_2, "cameras": [cam]}})
        assert r.status_code == 202, r.text
        run_id = r.json()["id"]
    hdr = {"Authorization": f"Bearer {stack.tokens['researcher']}"}
    run = _wait(f"{stack.api.url}/v1/runs/{run_id}", lambda x: x["status"] not in ("queued", "running"), 600, hdr)
    assert run["status"] == "finished", run
    with stack.client("researcher") as c:
        v = c.get(f"/v1/versions/{run['version_id']}").json()
        assert v["policy_type"] == "lerobot:diffusion", v
    with stack.client("operator") as c:
        assert c.post("/v1/deployments", json={"version": v["id"]}).status_code == 201
    serving = _wait(inf.url + "/v1/serving", lambda s: v["id"] in s["versions"] and s["fleet_version"] == v["id"])
    assert serving["versions"][v["id"]]["n_obs_steps"] == 2

    from training.runs import load_policy
    from training.sim.collect import PolicyActor

    rng = np.random.default_rng(5)
    ticks = [(rng.normal(size=4).astype(np.float32), {cam: rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)})
             for _ in range(3)]
    policy, _ = load_policy(v["artifact_dir"])
    actor = PolicyActor(policy, "push it", seed=11)
    actor.reset()  # the episode starts: the robot's loop observes every tick, asks at the last one
    for state, images in ticks[:-1]:
        actor.observe(state, images)
    obs = actor.observation(*ticks[-1])
    local = policy.predict_chunk([obs], actor.indicator, actor.beta)[0]
    served = _act(inf.url, stack.tokens["robot"], *ticks[-1], "push it", obs.seed, history=ticks[-2:-1])
    assert served.shape == (4, 3) and np.allclose(served, local, atol=1e-4)
    # the same tick with another history is another chunk: the history is read
    other = _act(inf.url, stack.tokens["robot"], *ticks[-1], "push it", obs.seed, history=ticks[:1])
    assert not np.allclose(other, served, atol=1e-4)
    r = _post_act(inf.url, stack.tokens["robot"], *ticks[-1], "push it", obs.seed)
    assert r.status_code == 422 and "history" in r.text, r.text
    bad = (np.full(4, np.nan, np.float32), ticks[0][1])
    r = _post_act(inf.url, stack.tokens["robot"], *ticks[-1], "push it", obs.seed, history=[bad])
    assert r.status_code == 422 and "history[0].state[0]" in r.text, r.text
