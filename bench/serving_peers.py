"""The peers of bench/serving.py, driven over their own protocols.

- LeRobot's async-inference PolicyServer (gRPC). Its wire format is pickle (TimedObservation in,
  list[TimedAction] out): this client speaks it because that is the peer being measured; nothing of
  ours uses pickle.
- A minimal websocket + msgpack server in the style of openpi's `WebsocketPolicyServer`: one
  connection per robot, each request answered by a forward pass of the policy in the event loop.
"""

from __future__ import annotations

import asyncio
import pickle  # nosec: LeRobot's PolicyServer protocol (the peer under test), never our wire
import re
import sys
import time
from pathlib import Path

import msgpack
import numpy as np


# -- LeRobot PolicyServer client ---------------------------------------------------------------

def lerobot_features(state_dim: int, cameras: dict[str, tuple[int, int, int]]) -> dict:
    from lerobot.utils.feature_utils import hw_to_dataset_features

    hw = {f"joint{i}.pos": float for i in range(state_dim)} | {c: hwc for c, hwc in cameras.items()}
    return hw_to_dataset_features(hw, "observation", use_video=False)


# what PolicyServer._predict_action_chunk logs per observation: conversion + pre + model + post
_LEROBOT_TOTAL = re.compile(r"Observation (\d+) \| Total time: ([0-9.]+)ms")


class LeRobotClient:
    """What LeRobot's RobotClient does per chunk: stream one observation (must_go), ask for actions.
    With its server's log (`log_path`, one client per server), `model_ms()` is the time the server
    logged for the observation just answered (it logs before it replies)."""

    def __init__(self, address: str, policy_dir: str, state_dim: int, cameras: dict, chunk: int,
                 log_path: Path | None = None):
        import grpc
        from lerobot.async_inference.helpers import RemotePolicyConfig
        from lerobot.transport import services_pb2, services_pb2_grpc

        self.pb = services_pb2
        self.channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20),
                                                               ("grpc.max_send_message_length", 64 << 20)])
        self.stub = services_pb2_grpc.AsyncInferenceStub(self.channel)
        self.stub.Ready(services_pb2.Empty())
        spec = RemotePolicyConfig("act", policy_dir, lerobot_features(state_dim, cameras), chunk, "cpu")
        self.stub.SendPolicyInstructions(services_pb2.PolicySetup(data=pickle.dumps(spec)))
        self.state_dim, self.t = state_dim, 0
        self.log = open(log_path, "rb") if log_path else None
        self.logged: dict[int, float] = {}
        self._tail = b""  # a line the server has not finished writing

    def act(self, state: np.ndarray, images: dict[str, np.ndarray]) -> np.ndarray | None:
        from lerobot.async_inference.helpers import TimedObservation
        from lerobot.transport.utils import send_bytes_in_chunks

        raw = {f"joint{i}.pos": float(state[i]) for i in range(self.state_dim)} | dict(images) | {"task": ""}
        obs = TimedObservation(timestamp=time.time(), timestep=self.t, observation=raw, must_go=True)
        self.t += 1
        self.stub.SendObservations(send_bytes_in_chunks(pickle.dumps(obs), self.pb.Observation, silent=True))
        reply = self.stub.GetActions(self.pb.Empty())
        if not reply.data:  # the server had no observation of ours to run
            return None
        actions = pickle.loads(reply.data)  # nosec: the peer's protocol
        return np.stack([a.get_action().numpy() for a in actions])

    def model_ms(self) -> float | None:
        if self.log is None:
            return None
        t, deadline = self.t - 1, time.monotonic() + 1.0
        while t not in self.logged and time.monotonic() < deadline:
            lines, _, self._tail = (self._tail + self.log.read()).rpartition(b"\n")
            self.logged.update((int(n), float(ms)) for n, ms in _LEROBOT_TOTAL.findall(lines.decode(errors="replace")))
            if t not in self.logged:
                time.sleep(0.005)
        return self.logged.pop(t, None)

    def close(self) -> None:
        self.channel.close()
        if self.log:
            self.log.close()


def lerobot_server_cmd(port: int, fps: int = 30) -> list[str]:
    return [sys.executable, "-m", "lerobot.async_inference.policy_server", "--host=127.0.0.1", f"--port={port}",
            f"--fps={fps}", "--inference_latency=0", "--obs_queue_timeout=2"]


# -- openpi-style websocket + msgpack server ------------------------------------------------------

def _pack(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a)
    return {"__ndarray__": True, "data": a.tobytes(), "dtype": a.dtype.str, "shape": list(a.shape)}


def _unpack(obj):
    if isinstance(obj, dict) and obj.get("__ndarray__"):
        return np.frombuffer(obj["data"], dtype=np.dtype(obj["dtype"])).reshape(obj["shape"])
    return obj


def packb(obj) -> bytes:
    return msgpack.packb(obj, default=lambda x: _pack(x) if isinstance(x, np.ndarray) else x)


def unpackb(data: bytes):
    return msgpack.unpackb(data, object_hook=_unpack)


def serve_openpi_style(policy_dir: str, port: int) -> None:
    """Run forever: per connection, metadata first, then request -> infer -> reply (openpi's loop)."""
    import torch
    import websockets

    from services.inference.runtime import Observation
    from services.inference.runtime_lerobot import LeRobotRuntime

    runtime = LeRobotRuntime("openpi-style", policy_dir)

    async def handler(ws):
        await ws.send(packb({"chunk": runtime.spec.chunk}))
        async for msg in ws:
            obs = unpackb(msg)
            t0 = time.perf_counter()
            with torch.inference_mode():
                actions = runtime.act([Observation(np.asarray(obs["state"], np.float32), obs["images"], "", 0)])[0]
            await ws.send(packb({"actions": actions, "server_timing": {"infer_ms": (time.perf_counter() - t0) * 1e3}}))

    async def main():
        async with websockets.serve(handler, "127.0.0.1", port, max_size=None, compression=None):
            await asyncio.Future()

    asyncio.run(main())


class OpenpiStyleClient:
    def __init__(self, url: str):
        from websockets.sync.client import connect

        self.ws = connect(url, max_size=None, compression=None)
        self.meta = unpackb(self.ws.recv())

    def act(self, state: np.ndarray, images: dict[str, np.ndarray]) -> np.ndarray:
        self.ws.send(packb({"state": state.astype(np.float32), "images": images}))
        reply = unpackb(self.ws.recv())
        self.infer_ms = reply["server_timing"]["infer_ms"]
        return reply["actions"]

    def model_ms(self) -> float | None:
        return self.infer_ms

    def close(self) -> None:
        self.ws.close()


if __name__ == "__main__":  # python -m bench.serving_peers openpi <policy_dir> <port>
    if sys.argv[1] == "openpi":
        serve_openpi_style(sys.argv[2], int(sys.argv[3]))
