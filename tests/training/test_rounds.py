"""The round definition the demo and the benchmark share (training/sim/rounds.py)."""

from __future__ import annotations

import itertools

import pytest

from services.demo.config import preset
from training.policies.registry import validate_policy_recipe
from training.sim import rounds
from training.sim.loop import LoopConfig


def test_layouts_of_different_roles_never_meet():
    groups, ks, rs = range(10), range(50), range(1, 6)
    by_role = {"demo": {rounds.demo_layout(g, k) for g, k in itertools.product(groups, ks)},
               "collect": {rounds.collect_layout(r, g, k) for r, g, k in itertools.product(rs, groups, ks)},
               "canary": {rounds.canary_layout(r, k) for r, k in itertools.product(rs, ks)},
               "eval": {rounds.eval_layout(g, k) for g, k in itertools.product(groups, ks)}}
    for (a, x), (b, y) in itertools.combinations(by_role.items(), 2):
        assert not x & y, (a, b)
    assert len(by_role["collect"]) == len(rs) * len(groups) * len(ks)  # every round its own layouts


@pytest.mark.parametrize("kind", list(rounds.POLICY_KINDS))
@pytest.mark.parametrize("quick", [False, True])
def test_demo_presets_are_valid_recipes_of_their_type(kind, quick, tmp_path):
    cfg = preset(quick, kind, out=tmp_path)
    recipe = cfg.recipe()
    checked = validate_policy_recipe(recipe["policy"])  # what POST /v1/runs accepts
    assert checked["type"] == rounds.POLICY_KINDS[kind]
    assert recipe["cameras"] == (["front"] if kind in rounds.IMAGE_KINDS else [])
    assert cfg.camera == (list(rounds.DEFAULT_CAMERA) if kind in rounds.IMAGE_KINDS else None)


def test_demo_and_benchmark_build_on_one_round_plan():
    shared = {f: getattr(rounds.RoundPlan(), f) for f in ("rounds", "max_steps", "demo_mix", "correction_budget",
                                                          "value", "policy")}
    assert isinstance(LoopConfig(), rounds.RoundPlan) and isinstance(preset(False), rounds.RoundPlan)
    assert {f: getattr(preset(False), f) for f in shared} == shared
    assert {f: getattr(LoopConfig(), f) for f in shared} == shared


def test_lerobot_sizes_are_at_least_one_and_zero_stays_where_it_means_something():
    from training.policies.registry import RecipeError
    for field in ("dim_model", "n_heads", "chunk_size", "n_action_steps"):
        with pytest.raises(RecipeError, match=field):
            validate_policy_recipe({"type": "lerobot:act", field: 0})
    assert validate_policy_recipe({"type": "lerobot:smolvla", "num_vlm_layers": 0})["num_vlm_layers"] == 0
    assert validate_policy_recipe({"type": "lerobot:diffusion", "drop_n_last_frames": 0})["drop_n_last_frames"] == 0
    assert validate_policy_recipe({"type": "lerobot:act", "lora_rank": 0})["lora_rank"] == 0
