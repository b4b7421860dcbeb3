"""The value function. The config imports no torch (the API reads it); the model is imported on
first use."""

from training.value.configuration_value import ValueConfig

__all__ = ["ValueConfig", "ValueFunction", "build_value_function"]


def __getattr__(name: str):
    if name in ("ValueFunction", "build_value_function"):
        from training.value import modeling_value

        return getattr(modeling_value, name)
    raise AttributeError(f"module 'training.value' has no attribute {name!r}")
