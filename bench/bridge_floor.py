"""The floor under the bridge's control loop in bench/bridge: a bare thread that wakes at the same
rate the same way (threading.Event.wait to the next slot) and does nothing else, in its own
process at normal priority, run beside the bridge while it records. Its lateness is what any control
loop of this kind gets from this machine at that moment; the bridge's cannot be lower.

    python -m bench.bridge_floor RATE_HZ SECONDS   -> one JSON line: lateness p50 / p99 / max (ms)
"""

from __future__ import annotations

import json
import sys
import threading
import time

import numpy as np


def main(rate_hz: float, seconds: float) -> None:
    period = int(1e9 / rate_hz)
    wake, lateness = threading.Event(), []

    def loop() -> None:
        nxt = time.monotonic_ns() + period
        end = time.monotonic_ns() + int(seconds * 1e9)
        while (now := time.monotonic_ns()) < end:
            if now < nxt:
                wake.wait((nxt - now) / 1e9)
                continue
            lateness.append((now - nxt) / 1e6)
            nxt = now + period if now - nxt > period else nxt + period

    t = threading.Thread(target=loop, name="control")
    t.start()
    t.join()
    lat = np.asarray(lateness or [0.0])
    print(json.dumps({"lateness_p50_ms": float(np.percentile(lat, 50)), "lateness_p99_ms": float(np.percentile(lat, 99)),
                      "lateness_max_ms": float(lat.max()), "ticks": len(lateness)}), flush=True)


if __name__ == "__main__":
    main(float(sys.argv[1]), float(sys.argv[2]))
