"""The native flow-matching policy: configuration (torch-free), model and processor."""

from training.policies.native.configuration_native import NativePolicyConfig

__all__ = ["NativePolicyConfig", "NativeFlowPolicy", "NativeProcessor"]


def __getattr__(name: str):  # the model and processor import torch; the config alone must not (API validation)
    if name == "NativeFlowPolicy":
        from training.policies.native.modeling_native import NativeFlowPolicy

        return NativeFlowPolicy
    if name == "NativeProcessor":
        from training.policies.native.processor_native import NativeProcessor

        return NativeProcessor
    raise AttributeError(name)
