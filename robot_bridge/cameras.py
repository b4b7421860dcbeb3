"""Cameras in their own process, which also records them: the control loop never shares an
interpreter lock with three 480x640 streams at 30-50 Hz (~140 MB/s of messages to deserialise, check,
decode, and 150 JPEG encodes a second to write), and never touches image bytes while it records.

The camera process (`python -m robot_bridge.cameras`, started and stopped by the bridge) subscribes to
the camera topics in the bridge's namespace and writes each valid frame, with its header stamp, into
a `FrameRing`: a file in /dev/shm that both processes map. At each tick the control loop reads from
the ring's metadata alone the stamp of the newest frame stamped at or before the tick (the same
causal rule as every other sample; no frame yet: the tick is skipped, an old one: a stale sample, as
for the cameras received in the bridge's process), without a lock and without waiting. While an
episode records, the control loop sends the camera process, over a pipe, one line per recorded tick
(its index, time and the chosen frames' stamps), and the camera process writes those frames at that
tick into the episode through a `data.store.FrameWriter`: the episode's own image arrays, in the
store's format, beside the bridge's EpisodeWriter, which writes everything else. Messages (JSON lines):

  bridge -> cameras   {"op": "start", "e": serial, "path", "cameras", "flush_ticks", "fsync", "max_backlog"}
                      {"op": "tick", "e", "k", "t", "s": [stamp per camera]}
                      {"op": "end", "e", "ticks"} | {"op": "abort", "e"}
  cameras -> bridge   {"op": "done", "e", "written": {file: [sha256, size]}}    every frame durable
                      {"op": "failed", "e", "error"} | {"op": "aborted", "e"}

The ring's last row carries the recording's figures back: the episode, how many of its ticks have
durable frames (the EpisodeWriter's journal never claims more, so a crash recovers only whole ticks)
and the frames written with a substitute (the chosen one had left the process's history: the newest
at or before the tick instead). One thread of the camera process picks each tick's frames as its line
arrives, another writes them (JPEG, shards, fsync); when the disk or the CPU falls behind by more than
`max_backlog` ticks (~1 s), the bridge runs its ticks unrecorded (counted, WARN) until it catches up,
rather than the control loop waiting or memory growing. The bridge creates the episode's arrays
before "start" and commits only after "done" (all frames durable); a camera process that fails or
dies during an episode ends it as an abort (kept as `incomplete`, only ticks with every frame),
never a commit. Only the policy's requests copy frames out of the ring, and, for a policy reading
the last n control ticks, each tick's newly arrived frames for its history (without a policy the
frames are not even copied into it: the stamps are all the control loop reads).

The camera process exits when the bridge is gone (its parent changes), and removes the ring then."""

from __future__ import annotations

import gc
import json
import os
import select
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np

SLOTS = 4  # frames kept per camera in the ring: a frame stamped before the tick may arrive after a newer one
HISTORY = 32  # frames kept per camera by the camera process for recording (the ring's SLOTS and ~0.5-1 s more)
# the ring's last row (the recorder's): episode serial, ticks with durable frames, frames substituted
_SERIAL, _DURABLE, _SUBSTITUTED = 0, 1, 2


class CameraProcessError(RuntimeError):
    """The camera process cannot record the episode (exited, restarted, failed): the message says why."""


class FrameRing:
    """Per camera SLOTS frames of `shape` (uint8) and per slot its sequence number (0: empty, -1: being
    written) and stamp, plus a write count and a refused count, and the recorder's row, in one
    memory-mapped file."""

    def __init__(self, path: str | Path, cameras: int, shape: tuple[int, int, int], create: bool = False):
        self.path, self.n, self.shape = Path(path), cameras, tuple(shape)
        self._cols = 2 * SLOTS + 2
        meta = (cameras + 1) * self._cols * 8
        size = meta + cameras * SLOTS * int(np.prod(shape))
        if create:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            os.ftruncate(fd, size)
            os.close(fd)
        self._mm = np.memmap(self.path, np.uint8, "r+", shape=(size,))
        mm = np.asarray(self._mm)  # plain views of the mapping: no memmap bookkeeping at every index on the control loop
        allmeta = mm[:meta].view(np.int64).reshape(cameras + 1, self._cols)
        self.meta, self.rec = allmeta[:cameras], allmeta[cameras]
        self.frames = mm[meta:].reshape(cameras, SLOTS, *shape)

    @classmethod
    def new(cls, cameras: int, shape: tuple[int, int, int]) -> "FrameRing":
        where = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
        return cls(where / f"recap-cameras-{os.getpid()}-{os.urandom(4).hex()}", cameras, shape, create=True)

    # -- the camera process ---------------------------------------------------------------------------

    def write(self, cam: int, stamp_ns: int, frame: np.ndarray | None) -> None:
        """A frame and its stamp (frame None: the stamp alone, when no one reads the frames here)."""
        m = self.meta[cam]
        w = int(m[2 * SLOTS])
        slot = w % SLOTS
        m[slot] = -1  # readers skip (or re-read) the slot from here on
        if frame is not None:
            self.frames[cam, slot] = frame
        m[SLOTS + slot] = stamp_ns
        m[slot] = w + 1
        m[2 * SLOTS] = w + 1

    def refuse(self, cam: int) -> None:
        self.meta[cam, 2 * SLOTS + 1] += 1

    def report(self, serial: int, durable: int) -> None:
        """The recording's progress: episode `serial` has `durable` ticks of frames on disk."""
        if int(self.rec[_SERIAL]) != serial:  # another episode: never a moment that pairs it with the old count
            self.rec[_SERIAL] = 0
            self.rec[_DURABLE] = 0
            self.rec[_SERIAL] = serial
        self.rec[_DURABLE] = durable

    def substituted_one(self) -> None:
        self.rec[_SUBSTITUTED] += 1

    # -- the control loop -------------------------------------------------------------------------------

    def newest(self, cam: int, tick_ns: int) -> int | None:
        """The stamp of the newest frame stamped at or before `tick_ns`, or None; no frame is copied."""
        m = self.meta[cam]
        seqs, stamps = m[:SLOTS].copy(), m[SLOTS:2 * SLOTS].copy()
        ok = (seqs > 0) & (stamps <= tick_ns)
        return int(stamps[ok].max()) if ok.any() else None

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

    def durable(self, serial: int) -> int:
        """Ticks of episode `serial` whose frames the camera process has on disk (0: none or another episode)."""
        first, d, last = int(self.rec[_SERIAL]), int(self.rec[_DURABLE]), int(self.rec[_SERIAL])
        return d if first == last == serial else 0

    def substituted(self) -> int:
        return int(self.rec[_SUBSTITUTED])

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


class _Recorder:
    """The camera process's recording: one thread reads the bridge's messages and picks each recorded
    tick's frames from the process's recent frames at once (so writing never delays the pick), another
    hands them, in order, to the episode's FrameWriter (which may wait on the disk)."""

    def __init__(self, ring: FrameRing, history: list[deque], control_fd: int, reply_fd: int):
        import queue

        self.ring, self.history = ring, history
        self._in, self._out = control_fd, reply_fd
        self._work: queue.Queue = queue.Queue()  # (op, msg, frames) in the bridge's order
        self.serial = 0  # the episode being recorded (the reading thread's view)
        self.max_backlog = 0
        self.dropping = 0
        self.writer = None  # the writing thread's, and the episode it writes
        self.writing = 0
        self.failed: dict[int, str] = {}

    def start(self) -> None:
        threading.Thread(target=self._read, name="recorder-read", daemon=True).start()
        threading.Thread(target=self._write, name="recorder-write", daemon=True).start()

    # -- the reading thread ---------------------------------------------------------------------------

    def _read(self) -> None:
        with os.fdopen(self._in, "rb") as f:
            for line in f:  # EOF: the bridge closed its end or is gone
                try:
                    msg = json.loads(line)
                    op = msg["op"]
                    if op == "start":
                        self.serial, self.max_backlog = int(msg["e"]), int(msg.get("max_backlog", 0))
                    if op == "abort":
                        self.dropping = int(msg["e"])  # its ticks still waiting are not written
                    if op == "tick":
                        frames = self._frames(msg)
                        if isinstance(frames, str):
                            self._work.put(("fail", msg, frames))
                            continue
                        if self.max_backlog and self._work.qsize() > 2 * self.max_backlog:  # the bridge holds back
                            self._work.put(("fail", msg, f"recording {self._work.qsize()} ticks behind"))  # before this
                            continue
                        self._work.put((op, msg, frames))
                    else:
                        self._work.put((op, msg, None))
                except Exception as e:  # a message it cannot follow: the episode cannot be recorded
                    self._work.put(("fail", {"e": self.serial}, f"camera process: {e!r}"))
        self._work.put(("abort", {"e": self.serial}, None))

    def _pick(self, cam: int, stamp: int, tick_ns: int) -> tuple[int, np.ndarray] | None:
        frames = list(self.history[cam])  # a snapshot (the receiving thread appends)
        for s, img in reversed(frames):
            if s == stamp:
                return s, img
        self.ring.substituted_one()  # gone already: the newest at or before the tick
        return max(((s, img) for s, img in frames if s <= tick_ns), key=lambda x: x[0], default=None)

    def _frames(self, msg: dict) -> tuple[list[np.ndarray], list[int]] | str:
        """The tick's frames and their own stamps (a frame repeated from the previous tick is encoded once)."""
        out, stamps = [], []
        for cam, stamp in enumerate(msg["s"]):
            picked = self._pick(cam, int(stamp), int(msg["t"]))
            if picked is None:
                return f"no frame of camera {cam} at or before tick {msg['k']} left to record"
            stamps.append(picked[0])
            out.append(picked[1])
        return out, stamps

    # -- the writing thread ---------------------------------------------------------------------------

    def _write(self) -> None:
        while True:
            op, msg, frames = self._work.get()
            try:
                if op == "fail":
                    self._fail(int(msg["e"]), frames)
                else:
                    getattr(self, "_" + op)(msg, frames)
            except Exception as e:
                self._fail(int(msg.get("e", 0)), f"camera process: {e!r}")

    def _reply(self, msg: dict) -> None:
        data = json.dumps(msg).encode() + b"\n"
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._out, view):]
        except OSError:  # the bridge is gone: no one to tell
            pass

    def _fail(self, serial: int, why: str) -> None:
        if self.writer is not None and self.writing == serial:
            self.writer.abandon()
            self.writer = None
        if serial and serial not in self.failed:
            self.failed[serial] = why
            print(f"camera process: episode {serial}: {why}", file=sys.stderr, flush=True)
            self._reply({"op": "failed", "e": serial, "error": why})

    def _start(self, msg: dict, _frames=None) -> None:
        from data.store import FrameWriter

        if self.writer is not None:
            self.writer.abandon()
            self.writer = None
        serial = int(msg["e"])
        self.ring.report(serial, 0)
        try:
            self.writer = FrameWriter(msg["path"], msg["cameras"], flush_ticks=int(msg["flush_ticks"]),
                                      fsync=bool(msg["fsync"]))
            self.writing = serial
        except Exception as e:
            self._fail(serial, f"cannot write the episode's frames: {e}")

    def _tick(self, msg: dict, frames: tuple[list[np.ndarray], list[int]]) -> None:
        serial = int(msg["e"])
        if self.writer is None or self.writing != serial or self.dropping == serial:
            return  # an episode that failed (already said), ended or is being aborted
        try:
            self.writer.add(int(msg["k"]), *frames)
        except Exception as e:
            self._fail(serial, str(e))
            return
        self.ring.report(serial, self.writer.durable)

    def _end(self, msg: dict, _frames=None) -> None:
        serial = int(msg["e"])
        if self.writer is None or self.writing != serial:
            why = self.failed.get(serial, "the camera process did not record this episode")
            self._reply({"op": "failed", "e": serial, "error": why})
            return
        w, self.writer = self.writer, None
        try:
            written = w.finish(int(msg["ticks"]))
        except Exception as e:
            self._fail(serial, str(e))
            return
        self.ring.report(serial, w.durable)
        self._reply({"op": "done", "e": serial, "written": written})

    def _abort(self, msg: dict, _frames=None) -> None:
        serial = int(msg["e"])
        if self.writer is not None and self.writing == serial:
            self.writer.abandon()
            self.writer = None
        self._reply({"op": "aborted", "e": serial})


def run(ring_path: str, spec: dict) -> None:
    """The camera process: subscribe, check, decode, write into the ring (and record the episode's
    frames) until the bridge is gone."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, ShutdownException, SingleThreadedExecutor
    from sensor_msgs.msg import CompressedImage, Image

    import data.store  # noqa: F401  (zarr and the JPEG codec, loaded before the first episode rather than in it)

    shape = tuple(spec["shape"])
    ring = FrameRing(ring_path, len(spec["topics"]), shape)
    parent = int(spec["parent_pid"])
    history = [deque(maxlen=HISTORY) for _ in spec["topics"]]
    _Recorder(ring, history, int(spec["control_fd"]), int(spec["reply_fd"])).start()
    rclpy.init(args=["--ros-args", *spec.get("ros_args", [])])
    try:
        node = rclpy.create_node(spec.get("node_name", "recap_cameras"), namespace=spec.get("namespace") or None)
    except Exception:  # noqa: BLE001 - stopped while starting, as below
        if rclpy.ok():
            raise
        return
    compressed = bool(spec["compressed"])
    frames_to_ring = bool(spec.get("frames_to_ring", True))  # only the policy's requests read them there

    def on_frame(cam: int, msg) -> None:
        img = _decode(msg, compressed, shape)
        if img is None:
            ring.refuse(cam)
            return
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        history[cam].append((stamp, img))  # first: a frame the ring shows is one the recorder can find
        ring.write(cam, stamp, img if frames_to_ring else None)

    try:
        for i, topic in enumerate(spec["topics"]):
            node.create_subscription(CompressedImage if compressed else Image, topic, lambda m, i=i: on_frame(i, m), 4)
    except Exception:  # noqa: BLE001 - rclpy's RCLError
        if rclpy.ok():
            raise
        return  # the bridge stopped it (SIGTERM shut the context down) while it was starting: nothing to say
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    gc.freeze()
    try:
        while rclpy.ok() and os.getppid() == parent:
            executor.spin_once(timeout_sec=0.2)
    except (KeyboardInterrupt, ExternalShutdownException, ShutdownException):
        pass  # stopped (SIGINT, or SIGTERM shutting the context down under the wait): nothing to say
    finally:
        if os.getppid() != parent:  # the bridge died without removing the ring
            ring.unlink()
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


class CameraProcess:
    """The bridge's side: the ring, the process that fills it, and the pipes to and from it."""

    def __init__(self, topics: list[str], shape: tuple[int, int, int], compressed: bool, namespace: str,
                 ros_args: list[str] | None = None, frames_to_ring: bool = True, nice: int = 0):
        """`frames_to_ring`: the frames themselves are copied into the ring (for the policy's requests);
        else only their stamps, which is all the control loop needs to record. `nice`: the camera
        process's niceness above the bridge's (measured at 50 Hz on 2 busy cores: a control loop ahead
        of the recording wakes on time more often; bench/results/bridge.md)."""
        self.ring = FrameRing.new(len(topics), shape)
        self._spec = {"topics": topics, "shape": list(shape), "compressed": compressed, "namespace": namespace,
                      "parent_pid": os.getpid(), "ros_args": ros_args or [], "frames_to_ring": frames_to_ring}
        self.nice = int(nice)
        self.restarts = 0
        self._send_lock = threading.Lock()  # the control loop (ticks) and the services (start, end, abort)
        self._recv_lock = threading.Lock()
        self._serial = 0
        self._live: int | None = None  # the episode the running process records
        self._failed: dict[int, str] = {}
        self._ctl = self._rep = -1
        self._start()

    def _start(self) -> None:
        import subprocess

        ctl_r, ctl_w = os.pipe()
        rep_r, rep_w = os.pipe()
        spec = self._spec | {"control_fd": ctl_r, "reply_fd": rep_w}
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "robot_bridge.cameras", str(self.ring.path),
                                          json.dumps(spec)], stdin=subprocess.DEVNULL, pass_fds=(ctl_r, rep_w))
        except BaseException:
            for fd in (ctl_w, rep_r):
                os.close(fd)
            raise
        finally:
            os.close(ctl_r)
            os.close(rep_w)
        if self.nice:  # set from here at once: recording tolerates a backlog, the control loop's wake-ups do not
            try:
                os.setpriority(os.PRIO_PROCESS, self.proc.pid, min(19, os.getpriority(os.PRIO_PROCESS, 0) + self.nice))
            except OSError:
                pass  # exited already: restart_if_gone says so
        os.set_blocking(ctl_w, False)  # the control loop never waits on the camera process
        self._ctl, self._rep, self._rbuf = ctl_w, rep_r, b""
        self.started = time.monotonic()

    def _close_pipes(self) -> None:
        for fd in (self._ctl, self._rep):
            if fd >= 0:
                os.close(fd)
        self._ctl = self._rep = -1

    def restart_if_gone(self) -> str | None:
        """Start the camera process again if it exited (the ring stays); how it exited, or None. An
        episode it was recording cannot be finished by the new one."""
        if self.proc.poll() is None:
            return None
        with self._recv_lock, self._send_lock:  # in this order everywhere
            how = f"camera process exited with {self.proc.returncode}"
            if self._live is not None:
                self._failed[self._live] = how
            self._live = None
            self._close_pipes()
            self.restarts += 1
            self._start()
        return how

    def alive(self) -> bool:
        return self.proc.poll() is None

    # -- recording ----------------------------------------------------------------------------------------

    def next_serial(self) -> int:
        with self._send_lock:
            self._serial += 1
            return self._serial

    def _send(self, msg: dict, wait_s: float = 0.0) -> None:
        """One message; with `wait_s` 0 (the control loop) it never waits: a full pipe (the camera
        process stopped reading) or a closed one (it died) raises CameraProcessError."""
        view = memoryview(json.dumps(msg, separators=(",", ":")).encode() + b"\n")
        deadline = time.monotonic() + wait_s
        try:
            while view:
                try:
                    view = view[os.write(self._ctl, view):]
                except BlockingIOError:
                    if not wait_s:  # a tick line is one atomic write (< PIPE_BUF): nothing of it went
                        raise CameraProcessError("camera process stopped reading (pipe full)") from None
                    left = deadline - time.monotonic()
                    if left <= 0 or not select.select([], [self._ctl], [], left)[1]:
                        raise CameraProcessError("camera process stopped reading (pipe full)") from None
        except (BrokenPipeError, OSError) as e:
            if isinstance(e, CameraProcessError):
                raise
            raise CameraProcessError(f"camera process gone ({e.strerror or e})") from None

    def start_episode(self, serial: int, path: Path, cameras: list[str], flush_ticks: int, fsync: bool,
                      max_backlog: int) -> None:
        """The camera process records episode `serial` (its arrays already created at `path`); the
        bridge never has more than `max_backlog` recorded ticks without durable frames."""
        with self._send_lock:
            if self.proc.poll() is not None:
                raise CameraProcessError(f"camera process exited with {self.proc.returncode}")
            self._send({"op": "start", "e": serial, "path": str(path), "cameras": cameras,
                        "flush_ticks": flush_ticks, "fsync": fsync, "max_backlog": max_backlog}, wait_s=2.0)
            self._live = serial

    def tick(self, serial: int, k: int, t_ns: int, stamps: list[int]) -> None:
        """Tick `k` of episode `serial` at `t_ns` records the frames stamped `stamps` (never waits)."""
        with self._send_lock:
            if serial != self._live:
                raise CameraProcessError(self._failed.get(serial, "camera process restarted"))
            try:
                self._send({"op": "tick", "e": serial, "k": k, "t": t_ns, "s": stamps})
            except CameraProcessError as e:
                self._live = None
                self._failed[serial] = str(e)
                if self.proc.poll() is None:  # stuck: a fresh one takes over (restart_if_gone)
                    self.proc.kill()
                raise

    def _replies(self, timeout: float) -> list[dict]:
        """Messages from the camera process that arrive within `timeout` (0: those already here)."""
        if not select.select([self._rep], [], [], timeout)[0]:
            return []
        data = os.read(self._rep, 1 << 20)  # b"": the camera process is gone
        self._rbuf += data
        *lines, self._rbuf = self._rbuf.split(b"\n")
        return [json.loads(x) for x in lines if x.strip()]

    def _await(self, serial: int, ops: tuple[str, ...], timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CameraProcessError(f"camera process did not answer within {timeout:.0f} s")
            for m in self._replies(min(left, 0.5)):
                if m.get("e") != serial:
                    continue
                if m["op"] == "failed":
                    self._failed[serial] = m.get("error", "failed")
                    raise CameraProcessError(self._failed[serial])
                if m["op"] in ops:
                    return m
            if self.proc.poll() is not None:
                raise CameraProcessError(self._failed.get(serial, f"camera process exited with {self.proc.returncode}"))

    def end_episode(self, serial: int, ticks: int, timeout: float = 60.0) -> dict[str, tuple[str, int]]:
        """Waits until the camera process has every one of the `ticks` ticks' frames durable; the files
        it wrote (for the commit's manifest). CameraProcessError when it cannot say so: then it has
        stopped writing the episode (killed if it did not answer)."""
        with self._recv_lock:
            try:
                with self._send_lock:
                    if serial != self._live:
                        raise CameraProcessError(self._failed.get(serial, "camera process restarted"))
                    self._live = None
                    self._send({"op": "end", "e": serial, "ticks": ticks}, wait_s=5.0)
                m = self._await(serial, ("done",), timeout)
            except CameraProcessError:
                self._stop_writing(serial)
                raise
        return {k: (v[0], int(v[1])) for k, v in m["written"].items()}

    def abort_episode(self, serial: int, timeout: float = 10.0) -> None:
        """The camera process stops writing episode `serial` (killed if it does not say so in time)."""
        with self._recv_lock:
            with self._send_lock:
                self._live = None if self._live == serial else self._live
                try:
                    self._send({"op": "abort", "e": serial}, wait_s=2.0)
                except CameraProcessError:
                    pass
            try:
                self._await(serial, ("aborted",), timeout)
            except CameraProcessError:
                self._stop_writing(serial)

    def _stop_writing(self, serial: int) -> None:
        """After a failed answer: a live process that may still be writing the episode is killed."""
        if self.proc.poll() is None and serial not in self._failed:
            self.proc.kill()
            self.proc.wait(5)

    def failure(self, serial: int) -> str | None:
        """Why the camera process cannot finish episode `serial` (it said so, exited or was replaced), or None."""
        with self._recv_lock:
            if self._rep >= 0:
                for m in self._replies(0.0):
                    if m.get("op") == "failed":
                        self._failed[int(m["e"])] = m.get("error", "failed")
        if serial in self._failed:
            return self._failed[serial]
        if self.proc.poll() is not None:
            return f"camera process exited with {self.proc.returncode}"
        return None

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
        self._close_pipes()
        self.ring.unlink()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    run(sys.argv[1], json.loads(sys.argv[2]))
