"""Data-parallel training: the same `recap train policy` command under torchrun with 2 CPU
processes (gloo) produces one verified artifact, written once."""

import json
import os
import subprocess
import sys

from data.catalog import Catalog
from tests.training.test_value_policy_run import _toy_store
from training.artifacts import verify_artifact


def test_two_process_training_run(tmp_path):
    store = _toy_store(tmp_path / "s", n=10)
    Catalog.for_store(store).register_many(store)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "data.cli_root", "train", "policy", "--store", str(store.root), "--runs-dir", str(tmp_path / "runs"),
           "--run-id", "ddp", "--method", "recap", "--horizon", "10", "--value-steps", "20", "--policy-steps", "20",
           "--hidden", "32", "--chunk", "4", "--max-len", "reach=40", "--positive-cap", "success_rate",
           "--positive-fraction", "0.9"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    run = tmp_path / "runs" / "ddp"
    man = verify_artifact(run / "policy")
    assert man["metrics"]["world_size"] == 2
    assert man["lineage"]["task_max_len"] == {"reach": 40}
    # the share the labels were set for: capped at the success rate of the policy's episodes (the toy's 5 policy
    # episodes succeed 3 times: 0.6 instead of the 0.9 asked for), saved with the labels
    labels = json.loads((run / "labels" / "advantages.json").read_text())
    assert labels["positive_fraction"] == 0.9 and labels["fractions"] == {"reach": 0.6}
    assert not [d for d in (tmp_path / "runs").iterdir() if d.name.startswith(".")]  # no stray temp artifacts
