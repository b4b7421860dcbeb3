"""Cameras in their own process, so the control loop never shares an interpreter lock with them:
three 480x640 streams at 30-50 Hz are ~140 MB/s of messages to deserialise, check and (JPEG) decode,
which in the control loop's process took its 50 Hz ticks late by tens of milliseconds.

The camera process (`python -m robot_bridge.cameras`, started and stopped by the bridge) subscribes to
the camera topics in the bridge's namespace and writes each valid frame, with its header stamp, into
a `FrameRing`: a file in /dev/shm that both processes map. The control loop reads, at each tick, the
newest frame stamped at or before the tick (the same causal rule as every other sample), copying it
out of the ring without a lock and without waiting: a slot being rewritten while it is read is
noticed (its sequence number changes) and read again. The frames then go to the episode writer as
before, so the store's crash-safety rules are unchanged; the camera process never writes the store.

The camera process exits when the bridge is gone (its parent changes), and removes the ring then."""

from __future__ import annotations

import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SLOTS = 4  # frames kept per camera: a frame stamped before the tick may arrive after a newer one


class FrameRing:
    """Per camera SLOTS frames of `shape` (uint8) and per slot its sequence number (0: empty, -1: being
    written) and stamp, plus a write count and a refused count, in one memory-mapped file."""

    def __init__(self, path: str | Path, cameras: int, shape: tuple[int, int, int], create: bool = False):
        self.path, self.n, self.shape = Path(path), cameras, tuple(shape)
        self._cols = 2 * SLOTS + 2
        meta = cameras * self._cols * 8
        size = meta + cameras * SLOTS * int(np.prod(shape))
        if create:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            os.ftruncate(fd, size)
            os.close(fd)
        self._mm = np.memmap(self.path, np.uint8, "r+", shape=(size,))
        self.meta = self._mm[:meta].view(np.int64).reshape(cameras, self._cols)
        self.frames = self._mm[meta:].reshape(cameras, SLOTS, *shape)

    @classmethod
    def new(cls, cameras: int, shape: tuple[int, int, int]) -> "FrameRing":
        where = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
        return cls(where / f"recap-cameras-{os.getpid()}-{os.urandom(4).hex()}", cameras, shape, create=True)

    # -- the camera process ---------------------------------------------------------------------------

    def write(self, cam: int, stamp_ns: int, frame: np.ndarray) -> None:
        m = self.meta[cam]
        w = int(m[2 * SLOTS])
        slot = w % SLOTS
        m[slot] = -1  # readers skip (or re-read) the slot from here on
        self.frames[cam, slot] = frame
        m[SLOTS + slot] = stamp_ns
        m[slot] = w + 1
        m[2 * SLOTS] = w + 1

    def refuse(self, cam: int) -> None:
        self.meta[cam, 2 * SLOTS + 1] += 1

    # -- the control loop -------------------------------------------------------------------------------

    def at(self, cam: int, tick_ns: int) -> tuple[int, np.ndarray] | None:
        """(stamp, a copy of the frame) of the newest frame stamped at or before `tick_ns`, or None."""
        m = self.meta[cam]
        for _ in range(4):
            seqs, stamps = m[:SLOTS].copy(), m[SLOTS:2 * SLOTS].copy()
            ok = (seqs > 0) & (stamps <= tick_ns)
            if not ok.any():
                return None
            slot = int(np.argmax(np.where(ok, stamps, np.iinfo(np.int64).min)))
            frame = self.frames[cam, slot].copy()
            if m[slot] == seqs[slot]:  # not rewritten while copied
                return int(stamps[slot]), frame
        return None

    def refused(self, cam: int) -> int:
        return int(self.meta[cam, 2 * SLOTS + 1])

    def written(self, cam: int) -> int:
        return int(self.meta[cam, 2 * SLOTS])

    def unlink(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def _decode(msg, compressed: bool, shape: tuple[int, int, int]) -> np.ndarray | None:
    """A frame of `shape` from an Image (rgb8) or a CompressedImage (JPEG), or None (refused)."""
    if compressed:
        import simplejpeg

        try:
            img = simplejpeg.decode_jpeg(bytes(msg.data), colorspace="RGB")
        except Exception:
            return None
        return img if img.shape == shape else None
    if msg.encoding != "rgb8" or (msg.height, msg.width, 3) != shape or len(msg.data) != msg.height * msg.width * 3:
        return None
    return np.frombuffer(msg.data, np.uint8).reshape(shape)


def run(ring_path: str, spec: dict) -> None:
    """The camera process: subscribe, check, decode, write into the ring until the bridge is gone."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import CompressedImage, Image

    shape = tuple(spec["shape"])
    ring = FrameRing(ring_path, len(spec["topics"]), shape)
    parent = int(spec["parent_pid"])
    rclpy.init(args=["--ros-args", *spec.get("ros_args", [])])
    node = rclpy.create_node(spec.get("node_name", "recap_cameras"), namespace=spec.get("namespace") or None)
    compressed = bool(spec["compressed"])

    def on_frame(cam: int, msg) -> None:
        img = _decode(msg, compressed, shape)
        if img is None:
            ring.refuse(cam)
            return
        ring.write(cam, msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec, img)

    for i, topic in enumerate(spec["topics"]):
        node.create_subscription(CompressedImage if compressed else Image, topic, lambda m, i=i: on_frame(i, m), 4)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    gc.freeze()
    try:
        while rclpy.ok() and os.getppid() == parent:
            executor.spin_once(timeout_sec=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        if os.getppid() != parent:  # the bridge died without removing the ring
            ring.unlink()
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


class CameraProcess:
    """The bridge's side: the ring and the process that fills it."""

    def __init__(self, topics: list[str], shape: tuple[int, int, int], compressed: bool, namespace: str,
                 ros_args: list[str] | None = None):
        self.ring = FrameRing.new(len(topics), shape)
        self._spec = {"topics": topics, "shape": list(shape), "compressed": compressed, "namespace": namespace,
                      "parent_pid": os.getpid(), "ros_args": ros_args or []}
        self.restarts = 0
        self._start()

    def _start(self) -> None:
        import subprocess

        self.proc = subprocess.Popen([sys.executable, "-m", "robot_bridge.cameras", str(self.ring.path),
                                      json.dumps(self._spec)], stdin=subprocess.DEVNULL)
        self.started = time.monotonic()

    def restart_if_gone(self) -> str | None:
        """Start the camera process again if it exited (the ring stays); how it exited, or None."""
        if self.proc.poll() is None:
            return None
        how = f"camera process exited with {self.proc.returncode}"
        self.restarts += 1
        self._start()
        return how

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        import signal
        import subprocess

        if self.proc.poll() is None:  # SIGTERM: ends it quietly even while it is still importing
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.ring.unlink()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    run(sys.argv[1], json.loads(sys.argv[2]))
