from training.policies.lerobot_adapter.configuration_adapter import LeRobotAdapterConfig
from training.policies.lerobot_adapter.modeling_adapter import LeRobotAdapter

__all__ = ["LeRobotAdapterConfig", "LeRobotAdapter"]
