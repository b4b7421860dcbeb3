"""The stack's processes end with the process that started them, even when it is killed with
SIGKILL (a demo or a test run stopped from outside): every process group `services.launch` starts
is registered with a reaper, a small process of its own that holds the read end of a pipe from the
launcher. When the pipe ends (the launcher exited, however) the reaper ends every group still
registered: SIGTERM, then SIGKILL after a grace period. A group the launcher stopped itself is
unregistered first, and a group is only signalled while its leader is the process registered (same
start time in /proc), so a recycled process id is never hit.

    launcher -> reaper (stdin)   "+PGID STARTTIME\\n" | "-PGID\\n"

Run as `python -m services.reaper GRACE_S`; imports nothing of the stack."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path


def start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, /proc/PID/stat field 22), or None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # fields after the command name, which may hold spaces


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def reap(groups: dict[int, str], grace_s: float) -> None:
    """SIGTERM each registered group whose leader is still the registered process (or gone, its
    group living on), then SIGKILL whatever is left after `grace_s`."""
    mine = [g for g, st in groups.items() if start_time(g) in (st, None) and _alive(g)]
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 0.0)):
        for g in mine:
            try:
                os.killpg(g, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + wait
        while (mine := [g for g in mine if _alive(g)]) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not mine:
            return


def main(grace_s: float) -> None:
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):  # the terminal's Ctrl-C is the launcher's to handle
        signal.signal(sig, signal.SIG_IGN)
    groups: dict[int, str] = {}
    for line in sys.stdin.buffer:
        parts = line.split()
        try:
            if parts and parts[0].startswith(b"+"):
                groups[int(parts[0][1:])] = parts[1].decode()
            elif parts and parts[0].startswith(b"-"):
                groups.pop(int(parts[0][1:]), None)
        except (ValueError, IndexError):
            continue
    reap(groups, grace_s)


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 10.0)
