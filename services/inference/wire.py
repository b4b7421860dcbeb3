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


def parse_observation(req: ActRequest, spec: InputSpec) -> Observation:
    state = to_array(req.state, "state", "float32", (spec.state_dim,))
    spec.envelope.check_state(state)  # in float64, before the cast could turn 1e300 into inf
    extra, missing = set(req.images) - set(spec.cameras), set(spec.cameras) - set(req.images)
    if extra:
        names = [c[:40] for c in sorted(extra)[:8]]  # the client's names, echoed short
        raise WireError(422, f"images: unknown camera(s) {names}; this policy uses {sorted(spec.cameras)}")
    if missing:
        raise WireError(422, f"images: missing camera(s) {sorted(missing)}")
    images = {c: to_array(req.images[c], f"images.{c}", "uint8", spec.cameras[c]) for c in spec.cameras}
    return Observation(state.astype(np.float32), images, req.instruction, req.seed)
