"""The act request and answer on the wire: JSON (arrays as nested lists) or msgpack (arrays as
{"dtype", "shape", "data": raw bytes}). Everything a robot sends is checked against the served
version's input spec; what is wrong is named in a 4xx, nothing reaches the model."""

from __future__ import annotations

import json
import math

import msgpack
import numpy as np

from services.inference.runtime import InputSpec, Observation

MSGPACK = "application/msgpack"
MAX_BODY_BYTES = 32 << 20
MAX_INSTRUCTION = 2000


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def decode_body(body: bytes, content_type: str | None) -> dict:
    if len(body) > MAX_BODY_BYTES:
        raise BadRequest(413, f"request body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
    try:
        if content_type and content_type.split(";")[0].strip() in (MSGPACK, "application/x-msgpack"):
            doc = msgpack.unpackb(body, raw=False, strict_map_key=True, max_bin_len=MAX_BODY_BYTES)
        else:
            doc = json.loads(body)
    except Exception as e:  # any decoding failure is the client's
        raise BadRequest(400, f"body is not valid {'msgpack' if content_type == MSGPACK else 'JSON'}: {e}") from e
    if not isinstance(doc, dict):
        raise BadRequest(422, "the body must be an object with 'state' (and 'images', 'instruction', 'seed')")
    return doc


def _array(value, name: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    if isinstance(value, dict):  # binary form
        try:
            got_dtype, got_shape, data = value["dtype"], tuple(value["shape"]), value["data"]
        except (KeyError, TypeError) as e:
            raise BadRequest(422, f"{name}: binary arrays need dtype, shape and data ({e})") from e
        if got_dtype != dtype:
            raise BadRequest(422, f"{name}: dtype {got_dtype!r}, expected {dtype}")
        if got_shape != shape:
            raise BadRequest(422, f"{name}: shape {list(got_shape)}, expected {list(shape)}")
        if not isinstance(data, (bytes, bytearray)) or len(data) != math.prod(shape) * np.dtype(dtype).itemsize:
            raise BadRequest(422, f"{name}: data must be {math.prod(shape) * np.dtype(dtype).itemsize} raw bytes")
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise BadRequest(422, f"{name}: not a numeric array ({e})") from e
    if arr.shape != shape:
        raise BadRequest(422, f"{name}: shape {list(arr.shape)}, expected {list(shape)}")
    if dtype == "uint8":
        if not np.all((arr >= 0) & (arr <= 255) & (arr == np.round(arr))):
            raise BadRequest(422, f"{name}: uint8 pixels must be integers in 0..255")
    return arr.astype(dtype)


def parse_observation(doc: dict, spec: InputSpec) -> Observation:
    unknown = set(doc) - {"state", "images", "instruction", "seed"}
    if unknown:
        raise BadRequest(422, f"unknown fields {sorted(unknown)}")
    if "state" not in doc:
        raise BadRequest(422, "state: required")
    state = _array(doc["state"], "state", "float32", (spec.state_dim,))
    if not np.all(np.isfinite(state)):
        raise BadRequest(422, "state: contains NaN or infinity")
    images = doc.get("images") or {}
    if not isinstance(images, dict):
        raise BadRequest(422, "images: must map camera names to arrays")
    extra, missing = set(images) - set(spec.cameras), set(spec.cameras) - set(images)
    if extra:
        raise BadRequest(422, f"images: unknown camera(s) {sorted(extra)}; this policy uses {sorted(spec.cameras)}")
    if missing:
        raise BadRequest(422, f"images: missing camera(s) {sorted(missing)}")
    imgs = {c: _array(images[c], f"images.{c}", "uint8", spec.cameras[c]) for c in spec.cameras}
    instruction = doc.get("instruction", "")
    if not isinstance(instruction, str) or len(instruction) > MAX_INSTRUCTION:
        raise BadRequest(422, f"instruction: a string of at most {MAX_INSTRUCTION} characters")
    seed = doc.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise BadRequest(422, "seed: an integer in [0, 2^63)")
    return Observation(state.astype(np.float32, copy=False), imgs, instruction, seed)


def encode_answer(actions: np.ndarray, version: str, timing: dict, binary: bool) -> bytes:
    if binary:
        a = np.ascontiguousarray(actions, dtype=np.float32)
        return msgpack.packb({"actions": {"dtype": "float32", "shape": list(a.shape), "data": a.tobytes()},
                              "version": version, "timing": timing})
    return json.dumps({"actions": actions.tolist(), "version": version, "timing": timing}).encode()


def decode_answer(body: bytes, binary: bool) -> dict:
    """Client side: the answer with `actions` as a float32 array."""
    doc = msgpack.unpackb(body, raw=False) if binary else json.loads(body)
    a = doc["actions"]
    doc["actions"] = (np.frombuffer(a["data"], np.float32).reshape(a["shape"]) if isinstance(a, dict)
                      else np.asarray(a, np.float32))
    return doc


def encode_request(state: np.ndarray, images: dict[str, np.ndarray] | None = None, instruction: str = "",
                   seed: int = 0, binary: bool = True) -> bytes:
    """Client side: an act request body."""
    if binary:
        def arr(x, dt):
            x = np.ascontiguousarray(x, dtype=dt)
            return {"dtype": dt, "shape": list(x.shape), "data": x.tobytes()}
        return msgpack.packb({"state": arr(state, "float32"), "images": {k: arr(v, "uint8") for k, v in (images or {}).items()},
                              "instruction": instruction, "seed": seed})
    return json.dumps({"state": np.asarray(state, float).tolist(),
                       "images": {k: np.asarray(v).tolist() for k, v in (images or {}).items()},
                       "instruction": instruction, "seed": seed}).encode()
