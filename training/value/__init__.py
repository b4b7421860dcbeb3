from training.value.configuration_value import ValueConfig
from training.value.modeling_value import ValueFunction

__all__ = ["ValueConfig", "ValueFunction"]
