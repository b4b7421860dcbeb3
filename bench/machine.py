"""What the machine did during a timed benchmark part, measured beside it: the share of the cores'
time the hypervisor gave to other machines (/proc/stat steal). On a shared virtual machine that share
moves timing figures more than anything the code does, so every timed part reports it."""

from __future__ import annotations

from pathlib import Path


def cpu_jiffies() -> tuple[int, int]:
    """(steal, total) jiffies of all CPUs so far; (0, 0) where /proc/stat cannot be read."""
    try:
        v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return (v[7] if len(v) > 7 else 0), sum(v[:8])


class Steal:
    """The steal share of the cores' time between `start()` and `stop()` (or within `with Steal() as s:`),
    then in `share`."""

    share = 0.0

    def start(self) -> "Steal":
        self._j0 = cpu_jiffies()
        return self

    def stop(self) -> float:
        j1 = cpu_jiffies()
        self.share = (j1[0] - self._j0[0]) / max(1, j1[1] - self._j0[1])
        return self.share

    def __enter__(self) -> "Steal":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
