"""Any LeRobot policy as an advantage-conditioned backbone: configuration (torch-free), model, processor."""

from training.policies.lerobot_adapter.configuration_adapter import LeRobotAdapterConfig

__all__ = ["LeRobotAdapterConfig", "LeRobotAdapter", "AdapterProcessor"]


def __getattr__(name: str):  # the model imports torch and LeRobot; the config alone must not
    if name == "LeRobotAdapter":
        from training.policies.lerobot_adapter.modeling_adapter import LeRobotAdapter

        return LeRobotAdapter
    if name == "AdapterProcessor":
        from training.policies.lerobot_adapter.processor_adapter import AdapterProcessor

        return AdapterProcessor
    raise AttributeError(name)
