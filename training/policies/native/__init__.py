from training.policies.native.configuration_native import NativePolicyConfig
from training.policies.native.modeling_native import NativeFlowPolicy

__all__ = ["NativePolicyConfig", "NativeFlowPolicy"]
