"""The inference server as a real uvicorn process fed by the real API over Redis: validation,
auth, batching that does not change answers, and hot swaps under load from 8 robots."""

from __future__ import annotations

import json
import threading
import time

import httpx
import msgpack
import numpy as np
import pytest
from websockets.sync.client import connect

from services.inference.wire import MSGPACK, decode_answer, encode_request
from tests.services.conftest import policy_artifact

STATE_DIM, ACTION_DIM, CHUNK, H, W = 4, 3, 4, 48, 64


def _deploy_versions(stack, tmp_path, n: int, cameras=("top",)) -> list[str]:
    ids = []
    with stack.client("researcher") as c:
        for i in range(n):
            d = policy_artifact(tmp_path / f"art{i}", i, cameras=list(cameras))
            r = c.post("/v1/versions", json={"artifact_dir": str(d)})
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
    return ids


def _wait_serving(url: str, predicate, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = httpx.get(url + "/v1/serving").json()
        if predicate(s):
            return s
        time.sleep(0.05)
    raise AssertionError(f"serving state never matched: {s}")


def _obs(rng, cameras=("top",)):
    return rng.normal(size=STATE_DIM).astype(np.float32), {c: rng.integers(0, 255, (H, W, 3), dtype=np.uint8) for c in cameras}


def test_act_answers_validates_and_authenticates(stack, tmp_path):
    (v1,) = _deploy_versions(stack, tmp_path, 1)
    with stack.client("operator") as c:
        assert c.post("/v1/deployments", json={"version": v1}).status_code == 201
    inf = stack.start_inference()
    _wait_serving(inf.url, lambda s: s["fleet_version"] == v1 and v1 in s["versions"])
    tok = stack.tokens["robot"]
    auth = {"Authorization": f"Bearer {tok}"}
    rng = np.random.default_rng(0)
    state, images = _obs(rng)

    r = httpx.post(inf.url + "/v1/act", content=encode_request(state, images, "push it", seed=7),
                   headers=auth | {"Content-Type": MSGPACK})
    assert r.status_code == 200, r.text
    ans = decode_answer(r.content, binary=True)
    assert ans["version"] == v1 and ans["actions"].shape == (CHUNK, ACTION_DIM) and np.isfinite(ans["actions"]).all()
    assert ans["timing"]["server_ms"] > 0 and ans["timing"]["batch_size"] >= 1
    rj = httpx.post(inf.url + "/v1/act", content=encode_request(state, images, "push it", seed=7, binary=False),
                    headers=auth | {"Content-Type": "application/json"})
    assert rj.status_code == 200
    assert np.allclose(decode_answer(rj.content, binary=False)["actions"], ans["actions"], atol=1e-5)

    def bad(body: bytes, ctype=MSGPACK, headers=auth):
        return httpx.post(inf.url + "/v1/act", content=body, headers=headers | {"Content-Type": ctype})

    cases = {
        "state": bad(encode_request(np.zeros(5), images)),
        "NaN": bad(encode_request(np.array([0, np.nan, 0, 0]), images)),
        "unknown camera": bad(encode_request(state, images | {"wrist": images["top"]})),
        "missing camera": bad(encode_request(state, {})),
        "shape": bad(encode_request(state, {"top": np.zeros((10, 10, 3), np.uint8)})),
        "dtype": bad(msgpack.packb({"state": state.tolist(), "images": {"top": {"dtype": "float32", "shape": [H, W, 3],
                                                                                 "data": b"\0" * (H * W * 12)}}})),
        "unknown fields": bad(msgpack.packb({"state": state.tolist(), "images": {}, "oops": 1})),
        "msgpack": bad(b"\xc1\xc1\xc1"),
        "JSON": bad(b"{not json", "application/json"),
        "object": bad(b"[1, 2]", "application/json"),
        "bytes": bad(b"\0" * (33 << 20)),
        "missing bearer": bad(encode_request(state, images), headers={}),
        "unknown or revoked": bad(encode_request(state, images), headers={"Authorization": "Bearer rcp_nope"}),
    }
    for words, resp in cases.items():
        assert 400 <= resp.status_code < 500, (words, resp.status_code, resp.text)
        assert words.split()[0].lower() in resp.json()["detail"].lower(), (words, resp.json())
    assert cases["bytes"].status_code == 413 and cases["missing bearer"].status_code == 401

    # what this robot's version reads (the bridge learns n_obs_steps here); robot tokens only
    spec = httpx.get(inf.url + "/v1/spec", headers=auth).json()
    assert (spec["version"], spec["state_dim"], spec["n_obs_steps"], spec["cameras"]) == (v1, STATE_DIM, 1, {"top": [H, W, 3]})
    assert httpx.get(inf.url + "/v1/spec").status_code == 401
    assert httpx.get(inf.url + "/v1/spec", headers={"Authorization": "Bearer rcp_nope"}).status_code == 401

    # the WebSocket stream: answers, errors in kind, and keeps the connection after an error
    with connect(inf.url.replace("http", "ws") + "/v1/stream", additional_headers=auth) as ws:
        ws.send(encode_request(state, images, "push it", seed=7))
        got = decode_answer(ws.recv(), binary=True)
        assert got["version"] == v1 and np.allclose(got["actions"], ans["actions"], atol=1e-5)
        ws.send(encode_request(np.zeros(2), images))
        err = msgpack.unpackb(ws.recv())
        assert err["status"] == 422 and "state" in err["error"]
        ws.send(json.dumps({"state": state.tolist(), "images": {"top": images["top"].tolist()}, "seed": 7,
                            "instruction": "push it"}))
        assert np.allclose(decode_answer(ws.recv().encode(), binary=False)["actions"], ans["actions"], atol=1e-5)

    metrics = httpx.get(inf.url + "/metrics").text
    assert 'recap_inference_requests_total{status="200",version="v1"}' in metrics
    assert "recap_inference_gc_pause_seconds" in metrics
    assert "recap_inference_batch_size_bucket" in metrics and 'recap_inference_version_loaded{version="v1"} 1.0' in metrics


def test_batched_answers_equal_unbatched(stack, tmp_path):
    (v1,) = _deploy_versions(stack, tmp_path, 1, cameras=())
    with stack.client("operator") as c:
        c.post("/v1/deployments", json={"version": v1})
    inf = stack.start_inference()
    _wait_serving(inf.url, lambda s: v1 in s["versions"])
    tok = stack.tokens["robot"]
    rng = np.random.default_rng(1)
    requests = [(rng.normal(size=STATE_DIM).astype(np.float32), i) for i in range(64)]

    def call(client, state, seed):
        r = client.post(inf.url + "/v1/act", content=encode_request(state, {}, "push it", seed=seed),
                        headers={"Authorization": f"Bearer {tok}", "Content-Type": MSGPACK})
        assert r.status_code == 200, r.text
        return decode_answer(r.content, binary=True)

    concurrent: dict[int, dict] = {}

    def worker(chunk):
        with httpx.Client(timeout=30) as client:
            for state, seed in chunk:
                concurrent[seed] = call(client, state, seed)

    threads = [threading.Thread(target=worker, args=(requests[k::8],)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(a["timing"]["batch_size"] for a in concurrent.values()) > 1, "no request was ever batched"
    with httpx.Client(timeout=30) as client:
        for state, seed in requests:
            alone = call(client, state, seed)
            assert alone["timing"]["batch_size"] == 1
            np.testing.assert_allclose(concurrent[seed]["actions"], alone["actions"], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_hot_swap_under_load_from_8_robots(stack, tmp_path):
    versions = _deploy_versions(stack, tmp_path, 21, cameras=())
    robots = [f"arm-{i}" for i in range(8)]
    tokens = {r: stack.robot_token(r) for r in robots}
    with stack.client("operator") as c:
        c.post("/v1/deployments", json={"version": versions[0]})
    inf = stack.start_inference()
    _wait_serving(inf.url, lambda s: s["fleet_version"] == versions[0] and set(robots) <= set(s["robots"]))
    seen: dict[str, list[int]] = {r: [] for r in robots}
    failures: list[str] = []
    stop = threading.Event()

    def client(robot):
        rng = np.random.default_rng(hash(robot) % 2**32)
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                try:
                    r = http.post(inf.url + "/v1/act", content=encode_request(rng.normal(size=STATE_DIM), {}, "push"),
                                  headers={"Authorization": f"Bearer {tokens[robot]}", "Content-Type": MSGPACK})
                except httpx.HTTPError as e:
                    failures.append(f"{robot}: {e}")
                    continue
                if r.status_code != 200:
                    failures.append(f"{robot}: {r.status_code} {r.text}")
                    continue
                seen[robot].append(int(decode_answer(r.content, binary=True)["version"][1:]))

    threads = [threading.Thread(target=client, args=(r,)) for r in robots]
    for t in threads:
        t.start()
    try:
        with stack.client("operator") as c:
            for v in versions[1:]:  # 20 swaps
                time.sleep(0.25)
                assert c.post("/v1/deployments", json={"version": v}).status_code == 201
        _wait_serving(inf.url, lambda s: s["fleet_version"] == versions[-1])
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    for robot, vs in seen.items():
        assert len(vs) > 20, robot
        assert vs == sorted(vs), f"{robot} went back to an older version: {vs}"
        assert vs[-1] == 21
    assert len({v for vs in seen.values() for v in vs}) >= 10  # the clients saw the swaps happen
    # canary: one robot on its own version, the rest unchanged
    with stack.client("operator") as c:
        c.post("/v1/deployments", json={"version": versions[3], "target_kind": "robot", "target": "arm-0",
                                        "stage": "canary"})
    _wait_serving(inf.url, lambda s: s["robots"].get("arm-0") == versions[3])
    for robot in ("arm-0", "arm-1"):
        r = httpx.post(inf.url + "/v1/act", content=encode_request(np.zeros(STATE_DIM), {}, "push"),
                       headers={"Authorization": f"Bearer {tokens[robot]}", "Content-Type": MSGPACK})
        assert decode_answer(r.content, binary=True)["version"] == (versions[3] if robot == "arm-0" else versions[-1])


def test_serves_a_lerobot_act_artifact_like_the_bare_policy(stack, tmp_path):
    import torch
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.factory import get_policy_class, make_policy_config, make_pre_post_processors

    from services.inference.runtime_lerobot import LeRobotRuntime
    from training.artifacts import ArtifactError
    from training.policies.lerobot_adapter.export import write_lerobot_artifact

    torch.manual_seed(0)
    inputs = {"observation.state": PolicyFeature(type=FeatureType.STATE, shape=(STATE_DIM,)),
              "observation.images.top": PolicyFeature(type=FeatureType.VISUAL, shape=(3, 32, 32))}
    cfg = make_policy_config("act", input_features=inputs, output_features={
        "action": PolicyFeature(type=FeatureType.ACTION, shape=(ACTION_DIM,))}, device="cpu", chunk_size=5,
        n_action_steps=5, dim_model=32, n_heads=2, dim_feedforward=64, n_encoder_layers=1, n_decoder_layers=1,
        use_vae=False, pretrained_backbone_weights=None)
    policy = get_policy_class("act")(cfg)
    stats = {"observation.state": {"mean": np.ones(STATE_DIM), "std": np.full(STATE_DIM, 2.0)},
             "action": {"mean": np.full(ACTION_DIM, 3.0), "std": np.full(ACTION_DIM, 0.5)},
             "observation.images.top": {"mean": np.full((3, 1, 1), 0.5), "std": np.full((3, 1, 1), 0.2)}}
    pre, post = make_pre_post_processors(cfg, dataset_stats=stats)
    write_lerobot_artifact(tmp_path / "act", policy, pre, post, lineage={"run": "handmade-act"})
    with stack.client("researcher") as c:
        v = c.post("/v1/versions", json={"artifact_dir": str(tmp_path / "act")}).json()
        assert v["policy_type"] == "lerobot_act", v
    with stack.client("operator") as c:
        c.post("/v1/deployments", json={"version": v["id"]})
    inf = stack.start_inference()
    _wait_serving(inf.url, lambda s: v["id"] in s["versions"])
    rng = np.random.default_rng(3)
    state, img = rng.normal(size=STATE_DIM).astype(np.float32), rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    r = httpx.post(inf.url + "/v1/act", content=encode_request(state, {"top": img}),
                   headers={"Authorization": f"Bearer {stack.tokens['robot']}", "Content-Type": MSGPACK})
    assert r.status_code == 200, r.text
    served = decode_answer(r.content, binary=True)["actions"]
    with torch.inference_mode():  # the policy itself, through LeRobot's own processors
        b = pre({"observation.state": torch.from_numpy(state), "task": "",
                 "observation.images.top": torch.from_numpy(img).permute(2, 0, 1).float() / 255})
        bare = post(policy.eval().predict_action_chunk(b)[0]).numpy()
    assert served.shape == (5, ACTION_DIM) and np.allclose(served, bare, atol=1e-4)
    (tmp_path / "act" / "lerobot.config.json").write_text("{}")  # tampered after registration: refused
    with pytest.raises(ArtifactError, match="lerobot.config.json"):
        LeRobotRuntime("x", tmp_path / "act")


def test_a_tampered_artifact_is_refused_and_the_old_version_keeps_serving(stack, tmp_path):
    v1, v2 = _deploy_versions(stack, tmp_path, 2, cameras=())
    with stack.client("operator") as c:
        c.post("/v1/deployments", json={"version": v1})
    inf = stack.start_inference()
    _wait_serving(inf.url, lambda s: s["fleet_version"] == v1)
    (tmp_path / "art1" / "model.safetensors").write_bytes(b"\0" * 64)  # v2's weights damaged on disk
    with stack.client("operator") as c:
        assert c.post("/v1/deployments", json={"version": v2}).status_code == 201
    s = _wait_serving(inf.url, lambda s: s["load_failures"] >= 1)
    assert s["fleet_version"] == v1 and list(s["versions"]) == [v1]
    r = httpx.post(inf.url + "/v1/act", content=encode_request(np.zeros(STATE_DIM), {}, "push"),
                   headers={"Authorization": f"Bearer {stack.tokens['robot']}", "Content-Type": MSGPACK})
    assert r.status_code == 200 and decode_answer(r.content, binary=True)["version"] == v1


def _critic_artifact(directory, seed: int):
    """A native policy with a chunk critic (seeded random weights), saved through the policy's contract."""
    import torch

    from data.stats import FeatureStats
    from training.policies.native import NativePolicyConfig
    from training.policies.policy import ChunkCritic, Policy
    from training.value import ValueConfig, build_value_function

    def wide(n):  # a wide envelope: nothing clipped, so answers compare exactly
        return FeatureStats(mean=[0.0] * n, std=[1.0] * n, min=[-100.0] * n, max=[100.0] * n, q01=[-2.0] * n,
                            q99=[2.0] * n, count=64)
    torch.manual_seed(seed)
    stats = {"observation.state": wide(STATE_DIM), "action": wide(ACTION_DIM)}
    policy = Policy("native_flow", NativePolicyConfig(state_dim=STATE_DIM, action_dim=ACTION_DIM, chunk=CHUNK, hidden=32,
                                                      flow_steps=4, seed=seed), stats)
    critic = build_value_function(ValueConfig(state_dim=STATE_DIM, hidden=32, ensemble=1, chunk=CHUNK,
                                              action_dim=ACTION_DIM))
    policy.critic = ChunkCritic(critic.eval(), stats, 4, {"push it": 100})
    policy.save(directory, lineage={"run": f"handmade-critic-{seed}"})
    return directory


def test_a_version_with_a_chunk_critic_answers_the_best_of_k_chunks(stack, tmp_path):
    from training.policies.policy import Observation, load_policy

    d = _critic_artifact(tmp_path / "critic-art", 3)
    local, _ = load_policy(d)
    state = np.full(STATE_DIM, 0.3, np.float32)
    # a seed whose best-scored chunk is not the plain one (its own seed's), so the answer tells them apart
    seed = next(s for s in range(50) if not np.allclose(
        local.predict_chunk([Observation(state, {}, "push it", s, 10)]),
        local.predict_chunk([Observation(state, {}, "push it", s, 10)], select=0)))
    chosen = local.predict_chunk([Observation(state, {}, "push it", seed, 10)])[0]
    with stack.client("researcher") as c:
        r = c.post("/v1/versions", json={"artifact_dir": str(d)})
        assert r.status_code == 201, r.text
        version = r.json()["id"]
    with stack.client("operator") as c:
        assert c.post("/v1/deployments", json={"version": version}).status_code == 201
    inf = stack.start_inference()
    _wait_serving(inf.url, lambda s: s["fleet_version"] == version and version in s["versions"])
    r = httpx.post(inf.url + "/v1/act", content=encode_request(state, {}, "push it", seed=seed, tick=10),
                   headers={"Authorization": f"Bearer {stack.tokens['robot']}", "Content-Type": MSGPACK})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(decode_answer(r.content, binary=True)["actions"], chosen, atol=1e-5, rtol=1e-5)
