"""Hostile act request bodies, shared by the adversarial tests and bench/probes/wire.py: a seeded
generator of malformed, mistyped, truncated, oversized-by-declaration and extreme-valued bodies (JSON
and msgpack), hypothesis strategies for property-based tests, and the checks on what came back."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import msgpack
import numpy as np
from hypothesis import strategies as st

from data.wire import MSGPACK, decode_answer

# finite values no sensor reports: each must be refused (422), never reach the model
EXTREME_VALUES = (3e38, -3e38, 1e20, -1e20, 1e10, 3.4028234663852886e38, 1e6)


@dataclass(frozen=True)
class Spec:
    """What the served version expects (from GET /v1/serving)."""

    state_dim: int
    cameras: dict[str, tuple[int, int, int]]
    action_low: np.ndarray | None = None
    action_high: np.ndarray | None = None

    @classmethod
    def of(cls, served: dict) -> "Spec":
        env = served.get("envelope") or {}
        lo, hi = env.get("action_low"), env.get("action_high")
        return cls(served["state_dim"], {k: tuple(v) for k, v in served["cameras"].items()},
                   None if lo is None else np.asarray(lo, np.float32), None if hi is None else np.asarray(hi, np.float32))


@dataclass
class Body:
    kind: str
    data: bytes
    binary: bool  # msgpack (else JSON)
    extreme: bool = False  # a well-formed body whose state is finite but extreme: must be a 422 naming state[i]


def _bin(x: np.ndarray, dtype: str) -> dict:
    x = np.ascontiguousarray(x, dtype=dtype)
    return {"dtype": dtype, "shape": list(x.shape), "data": x.tobytes()}


def valid_doc(rng: random.Random, spec: Spec, binary: bool) -> dict:
    state = np.array([rng.gauss(0, 1) for _ in range(spec.state_dim)], np.float32)
    nrng = np.random.default_rng(rng.getrandbits(32))
    images = {c: nrng.integers(0, 256, s, dtype=np.uint8) for c, s in spec.cameras.items()}
    if binary:
        return {"state": _bin(state, "float32"), "images": {c: _bin(v, "uint8") for c, v in images.items()},
                "instruction": "push it", "seed": rng.randrange(2**32)}
    return {"state": state.astype(float).tolist(), "images": {c: v.tolist() for c, v in images.items()},
            "instruction": "push it", "seed": rng.randrange(2**32)}


def encode(doc, binary: bool) -> bytes:
    return msgpack.packb(doc, use_bin_type=True) if binary else json.dumps(doc, allow_nan=True).encode()


def _junk(rng: random.Random, binary: bool):
    pool = ["x", "", -1, 0, 2**63, -(2**63), 1.5, float("nan"), float("inf"), None, True, [], {}, [[1, 2], [3]],
            {"dtype": "float32"}, "\u0000", [None] * 3]
    pool += [b"\xff\xfe", msgpack.ExtType(5, b"abc"), 2**64 - 1] if binary else ["\udcff", 10**400]
    return rng.choice(pool)


def _with(doc: dict, path: tuple, value) -> dict:
    doc = _copy(doc)
    target = doc
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = value
    return doc


def _copy(x):
    if isinstance(x, dict):
        return {k: _copy(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_copy(v) for v in x]
    return x


def bad_bodies(seed: int, spec: Spec, n: int):
    """`n` hostile bodies, cycling through the kinds below (deterministic for a seed)."""
    rng = random.Random(seed)
    cams = sorted(spec.cameras)
    kinds = ["mixed_keys", "big_ints", "deep_nesting", "wrong_types", "truncated", "nan_literals", "huge_shapes",
             "bit_flips", "random_bytes", "msgpack_oddities", "field_games", "extreme_state", "bad_arrays"]
    for i in range(n):
        kind = kinds[i % len(kinds)]
        binary = rng.random() < 0.5
        doc = valid_doc(rng, spec, binary)
        if kind == "mixed_keys":
            binary = True
            doc = valid_doc(rng, spec, True)
            where = rng.choice(["top", "images", "array", "all"])
            if where in ("top", "all"):
                doc[b"seed" if rng.random() < 0.5 else b"state"] = doc.pop("seed")
            if where in ("images", "all") and cams:
                doc["images"][cams[0].encode()] = doc["images"].pop(cams[0])
            if where in ("array", "all"):
                doc["state"][b"dtype"] = doc["state"].pop("dtype")
            if where == "top":
                doc[rng.choice([b"x", 7, b""])] = 1
            yield Body(kind, encode(doc, True), True)
        elif kind == "big_ints":  # integers too large for int64 or for a float, as JSON text
            big = str(rng.choice([2**64, 2**64 + 1, 10**30, 10**308, 10**400, -(10**400), 2**1000]))
            d = valid_doc(rng, spec, False)
            state = [big if k == rng.randrange(spec.state_dim) else "0.5" for k in range(spec.state_dim)]
            seed = big if rng.random() < 0.5 else "1"
            text = ('{"state": [' + ", ".join(state) + '], "images": ' + json.dumps(d["images"])
                    + f', "instruction": "push", "seed": {seed}}}')
            yield Body(kind, text.encode(), False)
        elif kind == "deep_nesting":
            depth = rng.choice([100, 1000, 10_000, 100_000])
            if binary:
                yield Body(kind, b"\x81\xa5state" + b"\x91" * depth + b"\x01", True)
            else:
                yield Body(kind, b'{"state": ' + b"[" * depth + b"1" + b"]" * depth + b"}", False)
        elif kind == "wrong_types":
            path = rng.choice([("state",), ("images",), ("instruction",), ("seed",)]
                              + [("images", c) for c in cams] + [("state", "shape"), ("state", "data")] * binary)
            yield Body(kind, encode(_with(doc, path, _junk(rng, binary)), binary), binary)
        elif kind == "truncated":
            data = encode(doc, binary)
            yield Body(kind, data[: rng.randrange(len(data))], binary)
        elif kind == "nan_literals":
            lit = rng.choice(["NaN", "Infinity", "-Infinity", "nan", "1e999", "-1e999"])
            if binary:
                doc["state"] = [float(rng.choice(["nan", "inf", "-inf"]))] * spec.state_dim
                yield Body(kind, encode(doc, True), True)
            else:
                doc["state"] = [0.0] * spec.state_dim
                text = json.dumps(doc).replace("0.0", lit, 1)
                yield Body(kind, text.encode(), False)
        elif kind == "huge_shapes":
            binary = True
            doc = valid_doc(rng, spec, True)
            shape = rng.choice([[2**31, 2**31], [2**62], [-1], [10**9, 10**9, 3], [1] * 10, [spec.state_dim, 0],
                                [2**16, 2**16, 3], [1.5], ["4"]])
            target = doc["state"] if rng.random() < 0.5 or not cams else doc["images"][cams[0]]
            target["shape"] = shape
            yield Body(kind, encode(doc, True), True)
        elif kind == "bit_flips":
            data = bytearray(encode(doc, binary))
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(min(len(data), 200))] = rng.randrange(256)
            yield Body(kind, bytes(data), binary)
        elif kind == "random_bytes":
            yield Body(kind, bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 7, 100, 4000]))), binary)
        elif kind == "msgpack_oddities":
            binary = True
            odd = rng.choice([
                b"\x81\xa5state\xc7\x05\x01abcde",  # ext type
                b"\x82\xa5state\x94\x00\x00\x00\x00\xabinstruction\xa3\xff\xfe\xfd",  # invalid UTF-8
                b"\x81\xa5state\xdd\xff\xff\xff\xff",  # an array declaring 4 billion items
                b"\xdf\xff\xff\xff\xff",  # a map declaring 4 billion pairs
                b"\x81\xa5state\xc6\xff\xff\xff\xff",  # a bin declaring 4 GB
                b"\x81\xa5state\x94\xcf\xff\xff\xff\xff\xff\xff\xff\xff\x00\x00\x00",
                b"\x81\xa4seed\xd3\x80\x00\x00\x00\x00\x00\x00\x00",  # seed = -2^63
                b"\x81\xa5state\x94\xcb\x7f\xf0\x00\x00\x00\x00\x00\x00\x00\x00\x00",  # +inf, truncated
                b"\x81\xd6\xff\x00\x00\x00\x00\x01",  # a timestamp as a key
                b"\xc1", b"\x90", b"\x80"])
            yield Body(kind, odd, True)
        elif kind == "field_games":
            game = rng.choice(["unknown", "missing_state", "huge_instruction", "negative_seed", "float_seed",
                               "bool_seed", "unknown_camera", "missing_camera", "long_camera_name", "null_images"])
            if game == "unknown":
                doc["oops"] = 1
            elif game == "missing_state":
                del doc["state"]
            elif game == "huge_instruction":
                doc["instruction"] = "x" * rng.choice([2001, 50_000])
            elif game == "negative_seed":
                doc["seed"] = -1
            elif game == "float_seed":
                doc["seed"] = 1.5
            elif game == "bool_seed":
                doc["seed"] = True
            elif game == "unknown_camera":
                doc["images"]["wrist\u0000"] = doc["images"][cams[0]] if cams else [[[0]]]
            elif game == "missing_camera":
                doc["images"] = {}
            elif game == "long_camera_name":
                doc["images"]["c" * 100_000] = [[[0]]]
            else:
                doc["images"] = None
            yield Body(kind, encode(doc, binary), binary)
        elif kind == "extreme_state":
            state = [rng.gauss(0, 1) for _ in range(spec.state_dim)]
            state[rng.randrange(spec.state_dim)] = rng.choice(EXTREME_VALUES) * rng.choice([1, -1])
            if binary:
                doc["state"] = _bin(np.asarray(state, np.float32), "float32")
            else:
                doc["state"] = state
            yield Body(kind, encode(doc, binary), binary, extreme=True)
        else:  # bad_arrays
            binary = True
            doc = valid_doc(rng, spec, True)
            game = rng.choice(["dtype", "short", "long", "object", "unknown_key", "list_image"])
            if game == "dtype":
                doc["state"]["dtype"] = rng.choice(["float64", "object", "<U10", "int8", "", "x" * 1000])
            elif game == "short":
                doc["state"]["data"] = doc["state"]["data"][:-1]
            elif game == "long":
                doc["state"]["data"] += b"\0" * 4
            elif game == "object":
                doc["state"] = {"dtype": "float32"}
            elif game == "unknown_key":
                doc["state"]["strides"] = [4]
            elif cams:
                doc["images"][cams[0]] = [[[256, -1, 0.5]]]
            yield Body(kind, encode(doc, True), True)


def extreme_states(seed: int, spec: Spec, n: int):
    """`n` well-formed bodies with one finite but extreme state value (both encodings)."""
    gen = (b for b in bad_bodies(seed, spec, n * 13) if b.extreme)
    for _ in range(n):
        yield next(gen)


# -- hypothesis: arbitrary values in place of a body or of one of its fields --------------------------

_scalars_json = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_scalars_msgpack = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
                    | st.text(max_size=20) | st.binary(max_size=20))
json_values = st.recursive(_scalars_json, lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=8), c, max_size=5),
                           max_leaves=30)
msgpack_values = st.recursive(_scalars_msgpack, lambda c: st.lists(c, max_size=5) | st.dictionaries(
    st.text(max_size=8) | st.binary(max_size=8) | st.integers(-5, 5), c, max_size=5), max_leaves=30)


@st.composite
def hostile_bodies(draw, spec: Spec) -> Body:
    """A random value as the whole body; or a valid body with one field replaced by a random value,
    one state value made extreme, or cut short."""
    binary = draw(st.booleans())
    values = msgpack_values if binary else json_values
    how = draw(st.sampled_from(["whole", "field", "extreme", "truncated"]))
    rng = random.Random(draw(st.integers(0, 2**32)))
    doc = valid_doc(rng, spec, binary)
    if how == "whole":
        return Body("hypothesis_whole", encode(draw(values), binary), binary)
    if how == "field":
        key = draw(st.sampled_from(["state", "images", "instruction", "seed", "extra"]))
        doc[key] = draw(values)
        return Body("hypothesis_field", encode(doc, binary), binary)
    if how == "extreme":
        state = np.asarray(doc["state"] if not binary else np.frombuffer(doc["state"]["data"], np.float32), np.float64)
        i = draw(st.integers(0, spec.state_dim - 1))
        state[i] = draw(st.floats(min_value=1e7, max_value=3.4e38)) * draw(st.sampled_from([1, -1]))
        doc["state"] = _bin(state.astype(np.float32), "float32") if binary else state.tolist()
        return Body("hypothesis_extreme", encode(doc, binary), binary, extreme=True)
    data = encode(doc, binary)
    return Body("hypothesis_truncated", data[: draw(st.integers(0, len(data) - 1))], binary)


# -- what came back ---------------------------------------------------------------------------------

def content_type(body: Body) -> str:
    return MSGPACK if body.binary else "application/json"


def check_answer(spec: Spec, status: int, payload: bytes, binary: bool) -> str | None:
    """None if the answer is acceptable for a hostile body; else what is wrong with it. A 200 must
    carry finite actions within the served version's action range."""
    if status >= 500:
        return f"server error {status}"
    if status != 200:
        return None
    try:
        actions = decode_answer(payload, binary)["actions"]
    except ValueError as e:
        return f"200 with an answer that is not a finite chunk: {e}"
    if spec.action_low is not None and not ((actions >= spec.action_low) & (actions <= spec.action_high)).all():
        return "200 with actions outside the action range"
    return None


def finite_state_refused(status: int, message: str) -> bool:
    """An extreme state must be refused with a 422 naming the state value."""
    return status == 422 and "state[" in message


def ws_exchange(ws, body) -> tuple[int, bytes, str]:
    """(status, payload, error text) of one WebSocket exchange: 200 for an answer, else the error's status."""
    if body.binary:
        ws.send(body.data)
        got = ws.recv(timeout=30)
    else:
        ws.send(body.data.decode("utf-8", "replace"))
        got = ws.recv(timeout=30).encode()
    doc = msgpack.unpackb(got, raw=False) if body.binary else json.loads(got)
    return (doc["status"], got, doc.get("error", "")) if "error" in doc else (200, got, "")
