"""The act request and answer on the wire, described once (msgspec Structs) and shared by the
inference server and the robot side. Torch-free (msgspec + numpy), so the bridge imports it.

Bodies are JSON or msgpack (Content-Type application/msgpack). Arrays travel as nested lists or as
{"dtype", "shape", "data"}: raw little-endian bytes in msgpack, base64 in JSON.

Invariants:
- Decoding is typed: a body that is not an ActRequest (malformed or truncated bytes, wrong types,
  unknown fields, map keys that are not strings, integers out of range, NaN literals in JSON) raises
  WireError, 400 for bytes that do not parse and 422 for a value that does not fit, naming where
  (`$.state[3]`). No other exception escapes `decode_request`.
- An array is checked against the dtype and shape the receiver expects, and its byte length against
  that shape, before anything of the declared size is allocated.
- `decode_answer` (the client side) gives back a float32 (chunk, action_dim) array or raises
  WireError: a robot never sees a malformed answer as actions.
"""

from __future__ import annotations

import math
from typing import Annotated, Sequence, Union

import msgspec
import numpy as np
from msgspec import Meta, Struct

MSGPACK = "application/msgpack"
MAX_INSTRUCTION = 2000
MAX_SEED = 2**63 - 1

Dim = Annotated[int, Meta(ge=0, le=1 << 16)]
Pixel = Annotated[int, Meta(ge=0, le=255)]


class WireError(ValueError):
    """A body that is not a valid act request (or answer): `status` is the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class BinaryArray(Struct, forbid_unknown_fields=True):
    dtype: str
    shape: Annotated[list[Dim], Meta(max_length=4)]
    data: bytes


MAX_TICK = 10**9  # a control tick within an episode (the recipe's largest task time limit)
MAX_HISTORY = 15  # earlier observations a request may carry (a policy reads at most 16 control ticks)


class PastObservation(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """An earlier control tick's state and images, for a policy that reads a history."""

    state: Union[list[float], BinaryArray]
    images: dict[str, Union[list[list[list[Pixel]]], BinaryArray]] = {}


class ActRequest(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """An observation: the robot's state, one image per camera of the policy, the task instruction,
    and the seed of the flow's starting noise (same seed, same chunk, batched or not). A policy that
    reads the last n control ticks (n_obs_steps in the serving table's spec) also gets the n - 1
    ticks before this one in `history`, oldest first: the robot keeps them, as it sees every tick."""

    state: Union[list[float], BinaryArray]
    images: dict[str, Union[list[list[list[Pixel]]], BinaryArray]] = {}
    instruction: Annotated[str, Meta(max_length=MAX_INSTRUCTION)] = ""
    seed: Annotated[int, Meta(ge=0, le=MAX_SEED)] = 0
    history: Annotated[list[PastObservation], Meta(max_length=MAX_HISTORY)] = []
    # the control tick within the episode (optional): the time input of a chunk critic's value-guided selection
    tick: Union[Annotated[int, Meta(ge=0, le=MAX_TICK)], None] = None


class ActAnswer(Struct, forbid_unknown_fields=True):
    """An action chunk (chunk x action_dim), the version that computed it, the server's timing and
    what the server did to the chunk (`flags`, e.g. "actions_clipped")."""

    actions: Union[list[list[float]], BinaryArray]
    version: str
    timing: dict[str, Union[int, float, str]] = {}
    flags: list[str] = []


class StreamError(Struct):
    """A WebSocket error answer (the connection stays open)."""

    error: str
    status: int


_json_request = msgspec.json.Decoder(ActRequest)
_msgpack_request = msgspec.msgpack.Decoder(ActRequest)
_json_answer = msgspec.json.Decoder(ActAnswer)
_msgpack_answer = msgspec.msgpack.Decoder(ActAnswer)
_json = msgspec.json.Encoder()
_msgpack = msgspec.msgpack.Encoder()


def is_msgpack(content_type: str | None) -> bool:
    return bool(content_type) and content_type.split(";")[0].strip().lower() in (MSGPACK, "application/x-msgpack")


def _decode(decoder, body: bytes, kind: str):
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as e:
        raise WireError(422, str(e)) from None
    except (msgspec.DecodeError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise WireError(400, f"body is not valid {kind}: {e}") from None


def decode_request(body: bytes, binary: bool) -> ActRequest:
    return _decode(_msgpack_request if binary else _json_request, body, "msgpack" if binary else "JSON")


def to_array(value, name: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """A wire array (either form) as a numpy array of `dtype` and exactly `shape`, or WireError(422)."""
    if isinstance(value, BinaryArray):
        if value.dtype != dtype:
            raise WireError(422, f"{name}: dtype {value.dtype[:32]!r}, expected {dtype}")
        if tuple(value.shape) != shape:
            raise WireError(422, f"{name}: shape {value.shape}, expected {list(shape)}")
        size = math.prod(shape) * np.dtype(dtype).itemsize
        if len(value.data) != size:
            raise WireError(422, f"{name}: data must be {size} raw bytes, got {len(value.data)}")
        return np.frombuffer(value.data, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape).astype(dtype)
    try:
        arr = np.asarray(value, dtype=np.float64 if dtype.startswith("float") else dtype)
    except (TypeError, ValueError, OverflowError):
        raise WireError(422, f"{name}: not a rectangular numeric array") from None
    if arr.shape != shape:
        raise WireError(422, f"{name}: shape {list(arr.shape)}, expected {list(shape)}")
    return arr


def _wire_array(x: np.ndarray, dtype: str) -> BinaryArray:
    x = np.ascontiguousarray(x, dtype=np.dtype(dtype).newbyteorder("<"))
    return BinaryArray(dtype, list(x.shape), x.tobytes())


def encode_request(state: np.ndarray, images: dict[str, np.ndarray] | None = None, instruction: str = "",
                   seed: int = 0, binary: bool = True,
                   history: Sequence[tuple[np.ndarray, dict[str, np.ndarray]]] = (), tick: int | None = None) -> bytes:
    """Client side: an act request body; `history`: the (state, images) of earlier ticks, oldest first;
    `tick`: the control tick within the episode, for a policy with value-guided chunk selection."""
    if binary:
        def wire(st, ims):
            return _wire_array(st, "float32"), {k: _wire_array(v, "uint8") for k, v in (ims or {}).items()}
    else:
        def wire(st, ims):
            return np.asarray(st, np.float64).tolist(), {k: np.asarray(v, np.uint8).tolist() for k, v in (ims or {}).items()}
    req = ActRequest(*wire(state, images), instruction, seed, [PastObservation(*wire(s, im)) for s, im in history],
                     tick)
    return (_msgpack if binary else _json).encode(req)


def encode_answer(actions: np.ndarray, version: str, timing: dict, binary: bool, flags: list[str] | tuple = ()) -> bytes:
    """Server side: the answer to an act request (`actions` already checked finite and bounded)."""
    if binary:
        return _msgpack.encode(ActAnswer(_wire_array(actions, "float32"), version, timing, list(flags)))
    return _json.encode(ActAnswer(np.asarray(actions, np.float32).astype(np.float64).tolist(), version, timing, list(flags)))


def decode_answer(body: bytes, binary: bool) -> dict:
    """Client side: {"actions": float32 (chunk, action_dim), "version", "timing", "flags"}; WireError if
    the answer is malformed, not two-dimensional, empty, or holds a non-finite value."""
    ans = _decode(_msgpack_answer if binary else _json_answer, body, "msgpack" if binary else "JSON")
    a = ans.actions
    if isinstance(a, BinaryArray):
        if len(a.shape) != 2:
            raise WireError(422, f"actions: shape {a.shape}, expected (chunk, action_dim)")
        actions = to_array(a, "actions", "float32", tuple(a.shape))
    else:
        actions = to_array(a, "actions", "float32", (len(a), len(a[0]) if a else 0)).astype(np.float32)
    if actions.size == 0 or not np.isfinite(actions).all():
        raise WireError(422, "actions: empty or not finite")
    return {"actions": actions, "version": ans.version, "timing": ans.timing, "flags": ans.flags}


def encode_error(message: str, status: int, binary: bool) -> bytes:
    """A WebSocket error answer, in the kind of the request."""
    return (_msgpack if binary else _json).encode(StreamError(message, status))


def schemas(ref_template: str = "#/components/schemas/{name}") -> tuple[dict, dict, dict]:
    """(the ActRequest schema, the ActAnswer schema, their components) as JSON Schema, for an
    OpenAPI document (in msgpack, `data` is raw bytes rather than base64)."""
    (request, answer), components = msgspec.json.schema_components([ActRequest, ActAnswer], ref_template=ref_template)
    return request, answer, components
