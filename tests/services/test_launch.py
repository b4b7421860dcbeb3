"""The stack's processes end with their launcher, however it ends (services/reaper.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # killed, waiting for whoever adopted it
    except psutil.NoSuchProcess:
        return True


def test_a_launcher_killed_with_sigkill_takes_its_processes_with_it_and_spares_what_it_stopped(tmp_path):
    script = f"""
import subprocess, sys, time
from pathlib import Path
from services.launch import start_process, start_redis
work = Path({str(tmp_path)!r})
redis = start_redis(work / "redis")
shell = start_process("shell", ["sh", "-c", "sleep 600 & sleep 600"], work, {{}})  # a group: the child too
stopped = start_process("stopped", ["sleep", "600"], work, {{}})
stopped.stop()
bystander = subprocess.Popen(["sleep", "600"], start_new_session=True)  # not started through the stack
print(redis.popen.pid, shell.popen.pid, bystander.pid, flush=True)
time.sleep(600)
"""
    launcher = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    started: list[int] = []
    try:
        redis, shell, bystander = (int(x) for x in launcher.stdout.readline().split())
        started = [redis, shell, bystander]
        time.sleep(0.5)  # the shell's own child
        group = [redis, shell, *(c.pid for c in psutil.Process(shell).children())]
        started += group
        assert len(group) >= 3 and not any(_gone(p) for p in group)
        launcher.kill()
        launcher.wait(10)
        deadline = time.monotonic() + 20
        while not all(_gone(p) for p in group) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(_gone(p) for p in group), [(p, _gone(p)) for p in group]
        assert not _gone(bystander)  # only what the stack started
    finally:
        launcher.kill()
        for pid in started:
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass
