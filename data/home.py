"""Where recap keeps its state when told nothing else: one `RECAP_HOME` directory (default
`./recap_home`) holds the episode store (`store/`, or `RECAP_STORE`), the catalog inside it, the
training runs (`runs/`) and the services' databases. Every command and service takes its defaults
from here, so a store written by one is found by the others."""

from __future__ import annotations

import os
from pathlib import Path


def recap_home() -> Path:
    """`RECAP_HOME`, or `./recap_home` in the working directory."""
    return Path(os.environ.get("RECAP_HOME") or Path.cwd() / "recap_home")


def default_store() -> Path:
    """`RECAP_STORE`, or `$RECAP_HOME/store`."""
    return Path(os.environ.get("RECAP_STORE") or recap_home() / "store")


def default_runs_dir() -> Path:
    """`RECAP_RUNS`, or `$RECAP_HOME/runs`."""
    return Path(os.environ.get("RECAP_RUNS") or recap_home() / "runs")
