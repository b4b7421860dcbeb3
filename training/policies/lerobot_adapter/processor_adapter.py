"""A LeRobot backbone's processing under the adapter: raw observations -> LeRobot batch keys.
State mean/std normalised with the run's stats (saved with the artifact), images uint8 (B, H, W, C)
-> float [0, 1] channels-first, the instruction as the "task" text (the advantage prompt and the
tokenisation are added by the model, which owns its tokenizer)."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from training.policies.native.processor_native import NativeProcessor, image_tensor


class AdapterProcessor(NativeProcessor):
    def observations(self, states: np.ndarray, images: Mapping[str, np.ndarray], instructions: Sequence[str],
                     device: torch.device | str = "cpu") -> dict:
        batch = {"observation.state": torch.from_numpy(self.stats["observation.state"].normalize(states)).float().to(device),
                 "task": list(instructions)}
        for c in self.cameras:
            batch[f"observation.images.{c}"] = image_tensor(images[c], device)
        return batch
