"""Probe: bad `recap` invocations (tests/cli_corpus.py) against the running stack's API, each a
fresh process. Counts what was tried, what ended with a traceback, what exited with another status
than 2 or said more (or less) than one error line; and the wall time of `recap --help`."""

from __future__ import annotations

from pathlib import Path

from tests.cli_corpus import help_seconds, run_corpus


def run(stack, work: Path) -> dict:
    results = run_corpus(work / "corpus", stack.api.url, stack.tokens)
    for r in results:
        if not r.ok:
            print(f"  cli: {r.describe()}", flush=True)
    return {
        "cli_bad_invocations": len(results),
        "cli_groups": len({r.invocation.group for r in results}),
        "cli_tracebacks": sum(r.traceback for r in results),
        "cli_exit_not_2": sum(r.returncode != 2 for r in results),
        "cli_not_one_error_line": sum(not r.ok and r.returncode == 2 and not r.traceback for r in results),
        "cli_slowest_seconds": round(max(r.seconds for r in results), 2),
        "recap_help_seconds": round(help_seconds(work / "help"), 3),
    }
