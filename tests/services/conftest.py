"""Real processes for the service tests: a Redis server, the API under uvicorn, the inference
server under uvicorn, RQ workers; tokens for every role."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

from services.auth import Role
from services.launch import Process, free_port, start_python, start_redis, start_uvicorn
from services.settings import ServiceSettings

ADMIN_TOKEN = "rcp_test_admin_token"


@dataclass
class Stack:
    settings: ServiceSettings
    redis: Process
    api: Process
    logs: Path
    tokens: dict[str, str] = field(default_factory=dict)
    extra: list[Process] = field(default_factory=list)

    def client(self, role: str = "admin") -> httpx.Client:
        return httpx.Client(base_url=self.api.url, headers={"Authorization": f"Bearer {self.tokens[role]}"}, timeout=60)

    def env(self) -> dict[str, str]:
        return self.settings.to_env()

    def start_inference(self, name: str = "inference", **env) -> Process:
        p = start_uvicorn(name, "services.inference.server:create_app", self.logs, {**self.env(), **env})
        self.extra.append(p)
        return p

    def start_worker(self, name: str = "worker", **env) -> Process:
        p = start_python(name, ["-m", "services.cli", "worker", "--name", name], self.logs, {**self.env(), **env})
        self.extra.append(p)
        return p

    def robot_token(self, robot_id: str, group: str = "default") -> str:
        with self.client("admin") as c:
            r = c.post("/v1/robots", json={"id": robot_id, "group": group})
            assert r.status_code == 201, r.text
            r = c.post("/v1/tokens", json={"name": f"robot-{robot_id}", "role": "robot", "robot_id": robot_id})
            assert r.status_code == 201, r.text
            return r.json()["token"]


@contextmanager
def running_stack(tmp_path: Path, **settings_kw):
    """Redis + the API (+ whatever the test starts through the Stack), stopped afterwards; then no
    process may have logged a traceback (workers may: they log the failures they retry)."""
    logs = tmp_path / "logs"
    redis = start_redis(tmp_path / "redis")
    settings = ServiceSettings(home=str(tmp_path / "home"), redis_url=redis.url, **settings_kw)
    api = None
    s = None
    try:
        api = start_uvicorn("api", "services.api.app:create_app", logs,
                            {**settings.to_env(), "RECAP_BOOTSTRAP_ADMIN_TOKEN": ADMIN_TOKEN})
        s = Stack(settings, redis, api, logs, {"admin": ADMIN_TOKEN})
        with s.client("admin") as c:
            for role in Role:
                if role in (Role.ADMIN, Role.ROBOT):
                    continue
                r = c.post("/v1/tokens", json={"name": f"test-{role}", "role": str(role)})
                assert r.status_code == 201, r.text
                s.tokens[str(role)] = r.json()["token"]
            r = c.post("/v1/robots", json={"id": "robot-0"})
            r = c.post("/v1/tokens", json={"name": "test-robot", "role": "robot", "robot_id": "robot-0"})
            s.tokens["robot"] = r.json()["token"]
        yield s
    finally:
        for p in (s.extra if s else []):
            p.stop()
        apis = [a for a in (api, s.api if s else None) if a]  # a test may have restarted the API
        apis = [a for i, a in enumerate(apis) if a not in apis[:i]]
        for a in apis:
            a.stop()
        redis.stop()
    for p in apis + (s.extra if s else []):
        text = p.log_text()
        assert "Traceback" not in text or p.name.startswith("worker"), f"{p.name} logged an error:\n{text[-4000:]}"


@pytest.fixture
def stack(tmp_path: Path):
    with running_stack(tmp_path) as s:
        yield s


@pytest.fixture(scope="module")
def shared_stack(tmp_path_factory):
    """One stack for the tests of a module that each add their own robots, episodes, tokens or
    uploads, assert only on those, and leave every process running: started once per module."""
    with running_stack(tmp_path_factory.mktemp("stack")) as s:
        yield s


@pytest.fixture
def postgres():
    """A real PostgreSQL server (Debian's `postgresql`) in a fresh cluster on a free port, with two
    databases (control plane, catalog); yields their SQLAlchemy URLs."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    assert versions, "PostgreSQL not installed: `make setup` installs the Debian package postgresql"
    bin_dir = versions[-1].parent
    root = Path(tempfile.mkdtemp(prefix="recap-pg-"))
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # initdb refuses root
    if as_postgres:
        shutil.chown(root, "postgres")
    port = free_port()
    subprocess.run([*as_postgres, str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", "recap", "--auth=trust",
                    "-E", "UTF8"], check=True, capture_output=True)
    log = open(tempfile.mktemp(prefix="recap-pg-", suffix=".log"), "wb")
    server = subprocess.Popen([*as_postgres, str(bin_dir / "postgres"), "-D", str(root / "data"), "-p", str(port),
                               "-k", str(root), "-h", "127.0.0.1"], stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run([str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                             capture_output=True).returncode != 0:
            assert server.poll() is None and time.monotonic() < deadline, Path(log.name).read_text()
            time.sleep(0.2)
        for db in ("recap_control", "recap_catalog"):
            subprocess.run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "recap", db],
                           check=True, capture_output=True)
        base = f"postgresql+psycopg://recap@127.0.0.1:{port}"
        yield {"control_url": f"{base}/recap_control", "catalog_url": f"{base}/recap_catalog"}
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(root, ignore_errors=True)


def policy_artifact(directory: Path, seed: int, *, state_dim: int = 4, action_dim: int = 3, chunk: int = 4,
                    cameras: list[str] | None = None, image_size=(48, 64)) -> Path:
    """A small native flow policy with seeded random weights, written as a real verified artifact."""
    import torch

    from data.stats import FeatureStats
    from training.artifacts import write_artifact
    from training.policies.native import NativeFlowPolicy, NativePolicyConfig

    torch.manual_seed(seed)
    cfg = NativePolicyConfig(state_dim=state_dim, action_dim=action_dim, chunk=chunk, hidden=32, flow_steps=4,
                             cameras=list(cameras or []), image_size=image_size, seed=seed)
    model = NativeFlowPolicy(cfg)
    rng = np.random.default_rng(seed)
    stats = {"observation.state": FeatureStats.of(rng.normal(size=(64, state_dim))),
             "action": FeatureStats.of(rng.normal(size=(64, action_dim)))}
    write_artifact(directory, kind="policy", model=model, config=cfg.to_dict() | {"type": "native_flow"}, stats=stats,
                   lineage={"run": f"handmade-{seed}"}, metrics={})
    return directory


def diffusion_artifact(directory: Path, seed: int, *, state_dim: int = 4, action_dim: int = 3, camera: str = "wrist",
                       image_size=(48, 64), n_obs_steps: int = 2) -> Path:
    """A small lerobot:diffusion policy reading the last `n_obs_steps` control ticks (seeded random
    weights, actions within +-0.5), written as a real verified artifact."""
    import torch

    from data.stats import FeatureStats
    from training.policies.lerobot_adapter import LeRobotAdapterConfig
    from training.policies.policy import Policy

    torch.manual_seed(seed)
    cfg = LeRobotAdapterConfig(policy_type="diffusion", state_dim=state_dim, action_dim=action_dim,
                               cameras={camera: (3, *image_size)}, n_obs_steps=n_obs_steps,
                               policy_kwargs=dict(horizon=8, n_action_steps=4, down_dims=[16, 32], kernel_size=3,
                                                  n_groups=4, diffusion_step_embed_dim=16, num_inference_steps=4,
                                                  spatial_softmax_num_keypoints=4, use_group_norm=True))
    rng = np.random.default_rng(seed)
    stats = {"observation.state": FeatureStats.of(rng.uniform(-1, 5, size=(64, state_dim))),
             "action": FeatureStats.of(rng.uniform(-0.5, 0.5, size=(64, action_dim)))}
    Policy("lerobot:diffusion", cfg, stats).eval().save(directory, lineage={"run": f"handmade-{seed}"})
    return directory
