import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")  # a test that turns W&B on never reaches a server
    monkeypatch.delenv("RECAP_WANDB_PROJECT", raising=False)  # a developer's own setting stays out of the tests
    os.environ.pop("RECAP_STORE", None)
    os.environ.pop("RECAP_CATALOG_URL", None)
