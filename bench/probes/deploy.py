"""Probe: concurrent deploy bursts. Two inference servers, robots in two groups streaming `/v1/act`
at them, and bursts of operator threads deploying different versions (and rolling back) to robots,
groups and the fleet at once. After each burst: how long until every server holds the database's
serving state (`heal_ms`: until a check every 20 ms has read the database and every server and
found them equal, the check's own round trips included), and whether, one second after the last deploy returned, any server would
still answer a robot with another version than `GET /v1/deployments/current` says."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from tests.services.deploy_bursts import (RobotStreams, SeqMonitor, assignment_history, burst, converged, divergences,
                                          setup_fleet, went_back)

BURSTS = 20
OPERATORS = 4
ACTIONS = 3  # per operator and burst
HEAL_TIMEOUT_S = 10.0


def run(stack, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    fleet = setup_fleet(stack, work, n_versions=4, n_robots=4, n_servers=2, name="deploy-inference")
    rng = np.random.default_rng(12)
    calls = deploy_5xx = diverged = never_healed = 0
    heal_ms: list[float] = []
    try:
        with RobotStreams(fleet) as streams, SeqMonitor(fleet) as monitor:
            for _ in range(BURSTS):
                out = burst(stack, fleet, rng, operators=OPERATORS, actions=ACTIONS)
                calls += sum(out["statuses"].values())
                deploy_5xx += sum(n for code, n in out["statuses"].items() if code >= 500)
                healed, checked = None, False
                while True:
                    since = time.monotonic() - out["ended"]
                    if healed is None and converged(stack, fleet):
                        healed = time.monotonic() - out["ended"]  # when it was seen, check included
                    if not checked and since >= 1.0:
                        diverged += bool(divergences(stack, fleet))
                        checked = True
                    if (healed is not None and checked) or since > HEAL_TIMEOUT_S:
                        break
                    time.sleep(0.02)
                if healed is None:
                    never_healed += 1
                else:
                    heal_ms.append(healed * 1e3)
        history = assignment_history(stack, fleet)
        answers = sum(len(a) for a in streams.answers.values())
        return {"deploy_bursts": BURSTS, "deploy_calls": calls, "deploy_5xx": deploy_5xx,
                "served_diverged_after_1s": diverged, "deploy_never_healed": never_healed,
                "heal_ms_max": round(max(heal_ms), 1) if heal_ms else None,
                "heal_ms_p50": round(float(np.median(heal_ms)), 1) if heal_ms else None,
                "act_answers_during_bursts": answers, "act_failures_during_bursts": len(streams.failures),
                "act_failure_examples": sorted({f.split(": ", 1)[-1][:160] for f in streams.failures})[:5],
                "robots_went_back": len(went_back(streams.answers, history)),
                "server_seq_decreases": len(monitor.decreases)}
    finally:
        for p in fleet.servers:
            p.stop()
        fleet.http.close()
