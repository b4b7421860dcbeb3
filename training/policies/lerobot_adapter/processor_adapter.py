"""A LeRobot backbone's processing under the adapter: raw observations -> LeRobot batch keys.
State mean/std normalised with the run's stats (saved with the artifact), images uint8 (B, H, W, C)
-> float [0, 1] channels-first, the instruction as the "task" text (the advantage prompt and the
tokenisation are added by the model, which owns its tokenizer). A policy that reads a history gets
states (B, n_obs_steps, S) and images (B, n_obs_steps, H, W, C), oldest first: the same steps, with
the time axis kept."""

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
            frames = images[c]
            if frames.ndim == 5:  # (B, n_obs_steps, H, W, C) -> (B, n_obs_steps, C, H, W)
                b, n = frames.shape[:2]
                batch[f"observation.images.{c}"] = image_tensor(frames.reshape(b * n, *frames.shape[2:]),
                                                                device).reshape(b, n, *frames.shape[-1:], *frames.shape[2:4])
            else:
                batch[f"observation.images.{c}"] = image_tensor(frames, device)
        return batch
