"""Experiment tracking of a training run (training/tracking.py): TensorBoard always, Weights & Biases
when configured. W&B runs offline here (no network): its run directory under the run's folder holds
what was logged, read back from its transaction log (the protobuf records `wandb sync` uploads)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from data.catalog import Catalog
from tests.training.test_value_policy_run import _toy_store
from training import recap
from training.methods import Method
from training.runs import RunSpec, run_training
from training.tracking import WandbSettings, read_run_scalars

BLOCK = 32768  # the transaction log's block size (LevelDB's log format)
HEADER = b":W&B\xe1\xbe\x00"  # magic and version 0


def wandb_records(path: Path):
    """The protobuf records of an offline run's `run-<id>.wandb` file."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:7] == HEADER, data[:7]
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # a block's tail too short for a record header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk  # 1 full, 2 first, 3 middle, 4 last
        if kind in (1, 4):
            r = pb.Record()
            r.ParseFromString(buf)
            yield r
            buf = b""


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


@pytest.mark.slow
def test_a_training_run_logs_its_curves_and_metrics_to_wandb_offline(tmp_path, monkeypatch):
    import wandb  # installed with the [wandb] extra: its absence is a failure, not a skip

    assert WandbSettings.from_env({}).enabled is False  # off unless a project is named
    with pytest.raises(ValueError, match="RECAP_WANDB_MODE"):
        WandbSettings.from_env({"RECAP_WANDB_PROJECT": "p", "RECAP_WANDB_MODE": "sometimes"})
    monkeypatch.setenv("RECAP_WANDB_PROJECT", "recap-tests")
    monkeypatch.setenv("WANDB_MODE", "offline")
    store = _toy_store(tmp_path / "s", n=6)
    cat = Catalog.for_store(store)
    cat.register_many(store)
    spec = RunSpec(run_id="tracked", method=Method.RECAP, recap=recap.RecapConfig(advantage_horizon=5),
                   value={"hidden": 16, "steps": 12, "batch_size": 32}, policy={"hidden": 16, "steps": 8, "chunk": 2})
    res = run_training(store, cat, spec, tmp_path / "runs", progress=False)
    info = res.metrics["wandb"]
    assert (info["project"], info["mode"]) == ("recap-tests", "offline") and "error" not in info, info
    run_dir = res.run_dir / info["dir"]
    assert run_dir.name.startswith("offline-run-") and run_dir.name.endswith(info["id"])
    [log] = run_dir.glob(f"run-{info['id']}.wandb")
    history, summary, config = [], {}, {}
    for r in wandb_records(log):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            history.append({_key(i): json.loads(i.value_json) for i in r.history.item})
        elif kind == "summary":
            summary.update({_key(i): json.loads(i.value_json) for i in r.summary.update})
        elif kind in ("run", "config"):  # the run record carries the config given to wandb.init
            config.update({_key(i): json.loads(i.value_json) for i in getattr(r, kind).config.update})
    # the same loss curves as the TensorBoard events, step by step
    board = read_run_scalars(res.run_dir)
    for curve in ("value", "policy"):
        logged = [(h[f"{curve}/step"], h[f"{curve}/loss"]) for h in history if f"{curve}/loss" in h]
        assert [s for s, _ in logged] == [int(s) for s, _ in board[f"{curve}/loss"]]
        assert np.allclose([y for _, y in logged], [y for _, y in board[f"{curve}/loss"]], rtol=1e-5)
    assert len([h for h in history if "value/loss" in h]) == res.metrics["value_steps"]
    # the run's scalar metrics in its summary, its spec as the config
    assert summary["metrics/policy_ticks"] == res.metrics["policy_ticks"]
    assert summary["metrics/positive_rate"] == pytest.approx(res.metrics["positive_rate"])
    assert config["run_id"] == "tracked" and config["method"] == "recap" and config["value"]["steps"] == 12
    assert wandb.__version__  # the run recorded where it went: the manifest's metrics name the W&B run
    assert json.loads((res.policy_dir / "manifest.json").read_text())["metrics"]["wandb"]["id"] == info["id"]
