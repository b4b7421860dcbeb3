"""Starting the real processes on one machine (Redis, the API, the inference server, workers, a
simulated cell's ROS nodes): used by the demo, `recap bridge up`, the benchmarks and the tests, so all
of them run the stack the same way. Whatever is started here ends when the process that started it
does, even killed with SIGKILL (services/reaper.py)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log: Path
    url: str | None = None
    port: int | None = None
    extra: dict = field(default_factory=dict)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        _REAPER.forget(self.popen.pid)
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL the process group (the process and every child it forked)."""
        if self.alive():
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()
        _REAPER.forget(self.popen.pid)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class _Reaper:
    """This process's reaper (services/reaper.py), started with the first process this module starts:
    whatever it started ends when this process does, even killed with SIGKILL."""

    GRACE_S = 10.0

    def __init__(self):
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._pid = 0  # the launcher the reaper belongs to (a forked child needs its own)

    def _pipe(self):
        if self._proc is None or self._pid != os.getpid() or self._proc.poll() is not None:
            self._proc = subprocess.Popen([sys.executable, "-m", "services.reaper", str(self.GRACE_S)],
                                          stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          start_new_session=True, cwd=Path(__file__).resolve().parents[1])
            self._pid = os.getpid()
        return self._proc.stdin

    def _say(self, line: str) -> None:
        with self._lock:
            try:
                pipe = self._pipe()
                pipe.write(line.encode())
                pipe.flush()
            except (OSError, ValueError):  # the reaper is gone: the processes are stopped as before, by their owner
                pass

    def watch(self, pid: int) -> None:
        from services.reaper import start_time

        self._say(f"+{pid} {start_time(pid) or 0}\n")

    def forget(self, pid: int) -> None:
        if self._proc is not None and self._pid == os.getpid():
            self._say(f"-{pid}\n")


_REAPER = _Reaper()


def _spawn(name: str, cmd: list[str], log_dir: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    log_dir.mkdir(parents=True, exist_ok=True)
    out = open(log_dir / f"{name}.log", "ab")
    full_env = {**os.environ, **(env or {})}
    p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
    _REAPER.watch(p.pid)  # its own session: pid = process group id
    return p


def start_redis(data_dir: Path, port: int | None = None) -> Process:
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server not found: `make setup` installs it (Debian package redis-server)")
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    p = _spawn(f"redis-{port}", [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                  "--dir", str(data_dir)], data_dir)
    r = Process("redis", p, data_dir / f"redis-{port}.log", url=f"redis://127.0.0.1:{port}/0", port=port)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return r
        except OSError:
            time.sleep(0.05)
        if not r.alive():
            break
    r.stop()
    raise RuntimeError(f"redis did not start on port {port}: {r.log_text()[-2000:]}")


def start_uvicorn(name: str, factory: str, log_dir: Path, env: dict[str, str], port: int | None = None,
                  timeout: float = 90.0, health: str = "/healthz", wait: bool = True) -> Process:
    """`factory`: "module:function" returning the ASGI app (uvicorn --factory). `wait`: return once
    it answers `health` (else at once: its URL is known; `wait_healthy` later)."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "uvicorn", factory, "--factory", "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "info", "--no-access-log"]
    proc = Process(name, _spawn(name, cmd, log_dir, env), log_dir / f"{name}.log", url=f"http://127.0.0.1:{port}",
                   port=port)
    if wait:
        wait_healthy(proc, health, timeout)
    return proc


def start_python(name: str, args: list[str], log_dir: Path, env: dict[str, str]) -> Process:
    return start_process(name, [sys.executable, *args], log_dir, env)


def start_process(name: str, cmd: list[str], log_dir: Path, env: dict[str, str], **extra) -> Process:
    """Any command in its own session (so a group kill reaches its children), logging to `name`.log."""
    return Process(name, _spawn(name, cmd, log_dir, env), log_dir / f"{name}.log", extra=extra)


def stop_together(procs: list[Process], sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    """`sig` to every process's group at once (their shutdowns overlap), then SIGKILL to any group
    still running `timeout` s later; each is unregistered from the reaper. ROS nodes stop on SIGINT
    (the bridge closes its writer and registrations)."""
    for p in procs:
        if p.alive():
            os.killpg(p.popen.pid, sig)
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        try:  # the group, even when its leader has exited: a child it left behind (the group id is not
            os.killpg(p.popen.pid, signal.SIGKILL)  # reused while any member lives) ends here too
        except ProcessLookupError:
            pass
        p.kill()


def wait_healthy(proc: Process, path: str = "/healthz", timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}): {proc.log_text()[-3000:]}")
        try:
            if httpx.get(proc.url + path, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.stop()
    raise RuntimeError(f"{proc.name} not healthy after {timeout} s: {proc.log_text()[-3000:]}")
