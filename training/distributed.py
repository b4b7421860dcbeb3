"""Data-parallel training through accelerate: one code path for 1 CPU process, N CPU processes
(gloo, under torchrun or `accelerate launch`) and N GPUs. Every rank samples its own batches;
gradients are averaged; only the main process writes files."""

from __future__ import annotations

import torch
from accelerate import Accelerator, PartialState

_state: PartialState | None = None


def init(device: str = "cpu") -> PartialState:
    """Create the process-wide state once: accelerate only recognises several CPU processes
    (torchrun's WORLD_SIZE) as one gloo job when told `cpu=True` on the first call."""
    global _state
    if _state is None:
        _state = PartialState(cpu=str(device) == "cpu" or not torch.cuda.is_available())
    return _state


def accelerator(device: str) -> Accelerator:
    init(device)
    return Accelerator(cpu=str(device) == "cpu" or not torch.cuda.is_available())


def is_main() -> bool:
    return init().is_main_process


def world() -> int:
    return init().num_processes


def barrier() -> None:
    init().wait_for_everyone()
