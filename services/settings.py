"""Where the services find their state. One `RECAP_HOME` holds the episode store, the catalog, the
control-plane database and the training runs by default; each can be pointed elsewhere (PostgreSQL,
another Redis) by environment variable, so the same processes scale from one machine to a fleet."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from data.home import recap_home


@dataclass(frozen=True)
class ServiceSettings:
    home: str
    redis_url: str = "redis://127.0.0.1:6379/0"
    catalog_url: str | None = None  # default: sqlite in the store
    control_url: str | None = None  # default: sqlite in home
    queue: str = "recap-training"
    channel: str = "recap:deployments"  # pub/sub channel the inference servers listen on

    @property
    def store_root(self) -> Path:
        return Path(self.home) / "store"

    @property
    def runs_dir(self) -> Path:
        return Path(self.home) / "runs"

    @property
    def uploads_dir(self) -> Path:
        return Path(self.home) / "uploads"

    @property
    def control_db_url(self) -> str:
        return self.control_url or f"sqlite:///{Path(self.home).resolve() / 'control.sqlite'}"

    @classmethod
    def from_env(cls) -> "ServiceSettings":
        env = os.environ
        return cls(home=str(recap_home()),
                   redis_url=env.get("RECAP_REDIS_URL", cls.redis_url),
                   catalog_url=env.get("RECAP_CATALOG_URL") or None, control_url=env.get("RECAP_CONTROL_URL") or None,
                   queue=env.get("RECAP_QUEUE", cls.queue), channel=env.get("RECAP_CHANNEL", cls.channel))

    def to_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process."""
        keys = {"home": "RECAP_HOME", "redis_url": "RECAP_REDIS_URL", "catalog_url": "RECAP_CATALOG_URL",
                "control_url": "RECAP_CONTROL_URL", "queue": "RECAP_QUEUE", "channel": "RECAP_CHANNEL"}
        return {keys[k]: str(v) for k, v in asdict(self).items() if v is not None}
