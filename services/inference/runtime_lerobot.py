"""LeRobot versions are served by the one runtime (services/inference/runtime.py); this name stays
for callers that load a LeRobot artifact directly."""

from services.inference.runtime import PolicyRuntime as LeRobotRuntime

__all__ = ["LeRobotRuntime"]
