"""Batching does not change a language policy's answers: a tiny SmolVLA (config, tokenizer and
processor built locally, no hub) served by the real inference server answers 8 concurrent robots,
with instructions of different token lengths and different seeds, as it answers each alone."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

STATE_DIM, ACTION_DIM, CHUNK, IMAGE = 5, 3, 6, (32, 32, 3)  # IMAGE: wire (H, W, C)
INSTRUCTIONS = ["push", "push the block", "pick the block and place it on the plate",
                "put it in", "place the block", "pick it", "push the a to the b on the plate", "put the block in the box"]


def smolvla_tiny_artifact(directory: Path, *, seed: int = 0, state_dim: int = STATE_DIM,
                          action_dim: int = ACTION_DIM, chunk: int = CHUNK, image: tuple = IMAGE) -> Path:
    """A SmolVLA with seeded random weights over a tiny SmolVLM (tests/training), with LeRobot's own
    pre/post-processors (tokenizer from the local folder), written as a verified artifact. The VLM
    folder lives beside the artifact: the policy's config names it."""
    import torch
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.factory import get_policy_class, make_policy_config, make_pre_post_processors

    from tests.training.test_lerobot_smolvla import tiny_smolvlm
    from training.policies.lerobot_adapter.export import write_lerobot_artifact

    directory = Path(directory)
    vlm = tiny_smolvlm(directory.with_name(directory.name + "-vlm"))
    torch.manual_seed(seed)
    h, w, c = image
    inputs = {"observation.state": PolicyFeature(type=FeatureType.STATE, shape=(state_dim,)),
              "observation.images.top": PolicyFeature(type=FeatureType.VISUAL, shape=(c, h, w))}
    outputs = {"action": PolicyFeature(type=FeatureType.ACTION, shape=(action_dim,))}
    cfg = make_policy_config("smolvla", input_features=inputs, output_features=outputs, device="cpu",
                             vlm_model_name=str(vlm), load_vlm_weights=False, chunk_size=chunk, n_action_steps=chunk,
                             num_steps=2, resize_imgs_with_padding=(32, 32), tokenizer_max_length=16,
                             num_vlm_layers=2, num_expert_layers=1, max_state_dim=8, max_action_dim=8)
    policy = get_policy_class("smolvla")(cfg)
    rng = np.random.default_rng(seed)
    stats = {"observation.state": {"mean": rng.normal(size=state_dim), "std": 1 + rng.random(state_dim)},
             "action": {"mean": rng.normal(size=action_dim), "std": 1 + rng.random(action_dim)}}
    pre, post = make_pre_post_processors(cfg, dataset_stats=stats)
    write_lerobot_artifact(directory, policy, pre, post, lineage={"run": f"handmade-smolvla-{seed}"})
    return directory


def test_a_batch_of_8_language_requests_answers_as_8_single_requests(stack, tmp_path):
    import threading

    import httpx
    from transformers import AutoTokenizer

    from services.inference.wire import MSGPACK, decode_answer, encode_request

    art = smolvla_tiny_artifact(tmp_path / "smolvla")
    lengths = {len(AutoTokenizer.from_pretrained(tmp_path / "smolvla-vlm")(t + "\n")["input_ids"]) for t in INSTRUCTIONS}
    assert len(lengths) >= 4, lengths  # the batch pads its prompts: different lengths side by side
    with stack.client("researcher") as c:
        v = c.post("/v1/versions", json={"artifact_dir": str(art)}).json()
        assert v["policy_type"] == "lerobot_smolvla", v
    with stack.client("operator") as c:
        assert c.post("/v1/deployments", json={"version": v["id"]}).status_code == 201
    # a lone request waits up to 1 s for company: the 8 concurrent ones share one model call
    inf = stack.start_inference(RECAP_BATCH_WAIT_MS="1000")
    deadline = time.monotonic() + 60
    while v["id"] not in httpx.get(inf.url + "/v1/serving").json()["versions"]:
        assert time.monotonic() < deadline, "the SmolVLA version never loaded"
        time.sleep(0.1)
    tokens = [stack.robot_token(f"arm-{k}") for k in range(8)]
    rng = np.random.default_rng(0)
    bodies = [encode_request(rng.normal(size=STATE_DIM).astype(np.float32),
                             {"top": rng.integers(0, 255, IMAGE, dtype=np.uint8)}, INSTRUCTIONS[k], seed=100 + k)
              for k in range(8)]

    def ask(k: int) -> dict:
        r = httpx.post(inf.url + "/v1/act", content=bodies[k], timeout=60,
                       headers={"Authorization": f"Bearer {tokens[k]}", "Content-Type": MSGPACK})
        assert r.status_code == 200, r.text
        return decode_answer(r.content, binary=True)

    batched: dict[int, dict] = {}
    go = threading.Barrier(8)

    def robot(k: int) -> None:
        go.wait()
        batched[k] = ask(k)

    threads = [threading.Thread(target=robot, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    single = {k: ask(k) for k in range(8)}
    assert sorted(batched) == list(range(8))
    assert {a["timing"]["batch_size"] for a in batched.values()} == {8}, [a["timing"] for a in batched.values()]
    assert {a["timing"]["batch_size"] for a in single.values()} == {1}
    for k in range(8):
        assert batched[k]["actions"].shape == (CHUNK, ACTION_DIM)
        assert np.allclose(batched[k]["actions"], single[k]["actions"], atol=1e-4, rtol=1e-4), k
    # each answer is the robot's own: different observations, prompts and seeds, different chunks
    assert all(not np.allclose(single[0]["actions"], single[k]["actions"], atol=1e-3) for k in range(1, 8))
    again = decode_answer(httpx.post(inf.url + "/v1/act", content=encode_request(
        np.zeros(STATE_DIM, np.float32), {"top": np.zeros(IMAGE, np.uint8)}, INSTRUCTIONS[0], seed=1),
        headers={"Authorization": f"Bearer {tokens[0]}", "Content-Type": MSGPACK}, timeout=60).content, binary=True)
    other_seed = decode_answer(httpx.post(inf.url + "/v1/act", content=encode_request(
        np.zeros(STATE_DIM, np.float32), {"top": np.zeros(IMAGE, np.uint8)}, INSTRUCTIONS[0], seed=2),
        headers={"Authorization": f"Bearer {tokens[0]}", "Content-Type": MSGPACK}, timeout=60).content, binary=True)
    assert not np.allclose(again["actions"], other_seed["actions"], atol=1e-3)  # the seed is the flow's noise
