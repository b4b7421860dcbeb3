"""The control plane and the robot side run without the model stack. The real API process, after
registering artifacts (good and forged), checking run recipes, starting a run and deploying (with a
β override), has not loaded torch; the modules the bridge and the worker's parent import load none
of it either. The probe is the process's own memory map (torch's shared libraries are mapped once
it is imported), checked against the inference server, which does load it."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.services.conftest import policy_artifact

TORCH_LIBRARY = re.compile(r"/torch/(lib/libtorch|_C)")


def maps_torch(pid: int) -> bool:
    return bool(TORCH_LIBRARY.search(Path(f"/proc/{pid}/maps").read_text()))


def _forged(tmp_path: Path, name: str, seed: int, edit) -> Path:
    d = policy_artifact(tmp_path / name, seed)
    edit(d)
    return d


def _manifest(d: Path, change) -> None:
    m = json.loads((d / "manifest.json").read_text())
    (d / "manifest.json").write_text(json.dumps(change(m)))


def _list_config(d: Path) -> None:
    """A config that is valid JSON but not an object, listed with its true digest."""
    (d / "config.json").write_text("[1]")
    _manifest(d, lambda m: {**m, "files": {**m["files"], "config.json": hashlib.sha256(b"[1]").hexdigest()}})


def test_the_api_process_serves_artifacts_runs_and_deploys_without_torch(stack, tmp_path):
    forged = {
        "a manifest that is a list": (lambda d: _manifest(d, lambda m: [m]), "manifest.json is malformed"),
        "a file outside the artifact": (lambda d: _manifest(d, lambda m: {**m, "files": {**m["files"],
                                                                                         "../x": "0" * 64}}),
                                        "'../x', which is not a file name"),
        "a config that is a list": (_list_config, "config.json is not a JSON object"),
    }
    with stack.client("researcher") as c:
        for i, (what, (edit, why)) in enumerate(forged.items()):
            r = c.post("/v1/versions", json={"artifact_dir": str(_forged(tmp_path, f"forged{i}", i, edit))})
            assert r.status_code == 422 and why in r.json()["detail"], (what, r.text)
            assert str(tmp_path) not in r.text
        r = c.post("/v1/versions", json={"artifact_dir": str(policy_artifact(tmp_path / "good", 7))})
        assert r.status_code == 201, r.text
        version = r.json()
        assert len(version["manifest_sha256"]) == 64 and version["policy_type"] == "native_flow"
        r = c.post("/v1/runs", json={"method": "bc", "recipe": {"recap": {"advantage_horizon": 0}}})
        assert r.status_code == 422 and "recap.advantage_horizon" in r.text, r.text  # the recipe's configs, read
        recipe = {"policy": {"chunk": 4}, "value": {"steps": 5}, "recap": {"cfg_beta": 2.0}}
        r = c.post("/v1/runs", json={"method": "bc", "recipe": recipe})  # the run route reads the catalog; no episode yet
        assert r.status_code == 422 and "matches no episode" in r.json()["detail"], r.text
    with stack.client("operator") as c:
        assert c.post("/v1/deployments", json={"version": version["id"], "beta": 1.5}).status_code == 201
        assert c.get("/v1/deployments/current").json()["robot-0"] == version["id"]
        assert c.get("/").status_code == 200
    assert stack.api.alive() and not maps_torch(stack.api.popen.pid)

    inference = stack.start_inference()  # the control: a process that imports torch shows it
    assert httpx.get(inference.url + "/healthz").status_code == 200
    assert maps_torch(inference.popen.pid)


def test_api_bridge_and_worker_modules_import_no_torch(tmp_path):
    code = ("import importlib, sys\n"
            "for name in ('services.api.app', 'services.registry', 'services.worker', 'services.cli', 'training.recipe',\n"
            "             'robot_bridge.bridge_node', 'robot_bridge.policy_client', 'robot_bridge.station',\n"
            "             'robot_bridge.shipper', 'robot_bridge.cli'):\n"
            "    module = importlib.import_module(name)\n"
            "    if name == 'services.api.app':\n"
            "        module.create_app()\n"
            "    heavy = [m for m in ('torch', 'safetensors', 'lerobot', 'transformers') if m in sys.modules]\n"
            "    if heavy:\n"
            "        sys.exit(f'{name} imports {heavy}')\n"
            "print('clean')\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "RECAP_HOME": str(tmp_path / "home")})
    assert p.returncode == 0 and p.stdout.strip() == "clean", p.stdout + p.stderr
