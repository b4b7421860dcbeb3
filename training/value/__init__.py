from training.value.configuration_value import ValueConfig
from training.value.modeling_value import ValueFunction, build_value_function

__all__ = ["ValueConfig", "ValueFunction", "build_value_function"]
