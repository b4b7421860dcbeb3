"""An act request, decoded by the shared wire codec (data/wire.py), checked against the served
version's input spec and envelope (services/inference/guard.py). What is wrong is named in a 4xx;
nothing unchecked reaches the model."""

from __future__ import annotations

import numpy as np

from data.wire import (MSGPACK, ActRequest, WireError, decode_answer, decode_request, encode_answer,
                       encode_error, encode_request, is_msgpack, to_array)
from services.inference.runtime import InputSpec, Observation

__all__ = ["MSGPACK", "WireError", "decode_answer", "decode_request", "encode_answer", "encode_error",
           "encode_request", "is_msgpack", "parse_observation"]


def _tick(state_value, image_values: dict, spec: InputSpec, where: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One control tick's state and images, checked against the spec; `where`: "" or "history[k]."."""
    state = to_array(state_value, f"{where}state", "float32", (spec.state_dim,))
    spec.envelope.check_state(state, f"{where}state")  # in float64, before the cast could turn 1e300 into inf
    extra, missing = set(image_values) - set(spec.cameras), set(spec.cameras) - set(image_values)
    if extra:
        names = [c[:40] for c in sorted(extra)[:8]]  # the client's names, echoed short
        raise WireError(422, f"{where}images: unknown camera(s) {names}; this policy uses {sorted(spec.cameras)}")
    if missing:
        raise WireError(422, f"{where}images: missing camera(s) {sorted(missing)}")
    images = {c: to_array(image_values[c], f"{where}images.{c}", "uint8", spec.cameras[c]) for c in spec.cameras}
    return state.astype(np.float32), images


def parse_observation(req: ActRequest, spec: InputSpec) -> Observation:
    """The request as the policy's input; a policy reading n_obs_steps ticks gets them stacked, oldest first."""
    if len(req.history) != spec.n_obs_steps - 1:
        need = (f"the {spec.n_obs_steps - 1} control tick(s) before this one, oldest first" if spec.n_obs_steps > 1
                else "none: it reads only the current observation")
        raise WireError(422, f"history: {len(req.history)} earlier observation(s) given; this policy reads the last "
                             f"{spec.n_obs_steps} tick(s), so history holds {need}")
    state, images = _tick(req.state, req.images, spec, "")
    if spec.n_obs_steps > 1:
        ticks = [_tick(h.state, h.images, spec, f"history[{k}].") for k, h in enumerate(req.history)]
        ticks.append((state, images))
        state = np.stack([s for s, _ in ticks])
        images = {c: np.stack([im[c] for _, im in ticks]) for c in spec.cameras}
    return Observation(state, images, req.instruction, req.seed, req.tick)
