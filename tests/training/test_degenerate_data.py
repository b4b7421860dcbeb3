"""Training runs on selections that hold degenerate episodes (empty, one tick, NaN or inf values,
arrays shorter than the tick count): the run leaves them out and lists them in its lineage; only a
selection with nothing usable stops it, with a message naming the episodes."""

import json

import numpy as np
import pytest

from data.catalog import Catalog
from data.schema import Outcome
from training import recap
from training.methods import Method
from training.runs import RunSpec, TrainingDataError, run_training
from training.artifacts import verify_artifact
from tests.store.generators import DEGENERATE_KINDS, write_degenerate
from tests.training.test_value_policy_run import _toy_store

TINY = dict(recap=recap.RecapConfig(advantage_horizon=5), value={"hidden": 16, "steps": 10, "batch_size": 32},
            policy={"hidden": 16, "steps": 10, "batch_size": 32, "chunk": 2})


def test_rewards_refuse_an_empty_episode_with_a_message():
    with pytest.raises(ValueError, match="0 ticks has no return"):
        recap.rewards(0, Outcome.FAILURE, 10.0)


@pytest.mark.slow
def test_run_leaves_degenerate_episodes_out_and_lists_them(tmp_path):
    store = _toy_store(tmp_path / "s", n=6)
    bad = {write_degenerate(store, kind, robot="toy", task="reach", index=i): kind
           for i, kind in enumerate(DEGENERATE_KINDS)}
    cat = Catalog.for_store(store)
    cat.register_many(store)
    res = run_training(store, cat, RunSpec(run_id="r", method=Method.RECAP, selection={"robot": "toy"}, **TINY),
                       tmp_path / "runs", progress=False)
    lineage = verify_artifact(res.policy_dir)["lineage"]
    assert set(lineage["excluded"]) == set(bad) and lineage["episodes"] == 6
    assert set(res.metrics["excluded"]) == set(bad) and res.metrics["episodes"] == 6
    sel = json.loads((res.run_dir / "episodes.json").read_text())
    assert not set(sel["episodes"]) & set(bad)
    assert "0 ticks" in sel["excluded"][next(e for e, k in bad.items() if k == "empty")]

    # nothing usable: the run stops and names every episode with its reason
    with pytest.raises(TrainingDataError) as err:
        run_training(store, cat, RunSpec(run_id="bad", method=Method.RECAP, selection={"ids": list(bad)}, **TINY),
                     tmp_path / "runs", progress=False)
    assert all(eid in str(err.value) for eid in bad)
    assert "NaN or infinite" in str(err.value) and "rows for 12 ticks" in str(err.value)

    # known outcomes are needed to fit a value function: a message, not a crash deep in the fit
    eid = store.episode_ids()[-1]
    store.label(eid, Outcome.UNKNOWN, "tester")
    cat.register(store.open(eid))
    with pytest.raises(TrainingDataError, match=f"{eid}: outcome unknown"):
        run_training(store, cat, RunSpec(run_id="unk", method=Method.RECAP, selection={"ids": [eid]}, **TINY),
                     tmp_path / "runs", progress=False)
    cat.close()
