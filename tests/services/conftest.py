"""Real processes for the service tests: a Redis server, the API under uvicorn, the inference
server under uvicorn, RQ workers; tokens for every role."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

from services.auth import Role
from services.launch import Process, start_python, start_redis, start_uvicorn
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

    def start_worker(self, name: str = "worker") -> Process:
        p = start_python(name, ["-m", "services.cli", "worker", "--name", name], self.logs, self.env())
        self.extra.append(p)
        return p

    def robot_token(self, robot_id: str, group: str = "default") -> str:
        with self.client("admin") as c:
            r = c.post("/v1/robots", json={"id": robot_id, "group": group})
            assert r.status_code == 201, r.text
            r = c.post("/v1/tokens", json={"name": f"robot-{robot_id}", "role": "robot", "robot_id": robot_id})
            assert r.status_code == 201, r.text
            return r.json()["token"]


@pytest.fixture
def stack(tmp_path: Path):
    logs = tmp_path / "logs"
    redis = start_redis(tmp_path / "redis")
    settings = ServiceSettings(home=str(tmp_path / "home"), redis_url=redis.url)
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
        if api:
            api.stop()
        redis.stop()
    for p in ([api] if api else []) + (s.extra if s else []):
        text = p.log_text()
        assert "Traceback" not in text or p.name.startswith("worker"), f"{p.name} logged an error:\n{text[-4000:]}"


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
