"""The control plane's own database: tokens, audit log, robots, policy versions, deployments,
training runs. The episode catalog (data/) stays the source of truth for episodes."""

from services.control.database import ControlDB

__all__ = ["ControlDB"]
