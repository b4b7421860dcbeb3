"""The demo's live view: the current phase, what each robot is doing, the training run's progress,
the per-round table. A live screen on a terminal (rich), plain log lines otherwise (CI, logs)."""

from __future__ import annotations

import sys
import threading
import time

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text


def _effort(r: dict) -> str:
    if r.get("takeovers_per_robot_hour") is None:
        return "-"
    return f"{r['takeovers_per_robot_hour']:.0f}, {r['return_on_human_effort']:.1f}"


def _mistake(r: dict) -> str:
    """Mistake to takeover while collecting, where known: mean / median s (takeovers with a known mistake of all)."""
    if r.get("takeovers") is None:
        return "-"
    if r.get("mistake_to_takeover_s_mean") is None:
        return "unknown"
    return (f"{r['mistake_to_takeover_s_mean']:.2f} / {r['mistake_to_takeover_s_median']:.2f} s "
            f"({r['takeovers_mistake_known']}/{r['takeovers']})")


def _gates(r: dict) -> str:
    return " ".join(f"#{g['id']} {g['version_id']} {g['status']}{' (drill)' if g['drill'] else ''}"
                    for g in r.get("gates", [])) or "-"


def round_table(records: list[dict]) -> Table:
    robots = sorted({k for r in records for k in r["robot_versions"]})
    t = Table(title="per round (evaluation: autonomous episodes on fixed layouts, flagged as evaluation in the catalog "
                    "and never selected for training)", header_style="bold",
              caption=f"version per robot: {', '.join(robots)}; corrections: share of collected ticks; takeovers per "
                      "robot-hour and return on human effort (successes / (1 + correction minutes)) while collecting; mistake "
                      "to takeover: mean / median seconds (takeovers whose mistake is known / all)")
    for col, wrap in (("round", False), ("version", False), ("success", False), ("successes /h", False),
                      ("mean steps", False), ("collected: success, corrections", True),
                      ("takeovers /robot-h, ROHE", True), ("mistake → takeover", True), ("canary gate", True),
                      ("version per robot", True)):
        t.add_column(col, justify="left" if col in ("version per robot", "canary gate") else "right",
                     no_wrap=not wrap, min_width=None if wrap else len(col.split()[0]))
    for r in sorted(records, key=lambda x: x["round"]):
        coll = ("demos" if r["round"] == 0 else
                f"{r['collected_episodes']}: {100 * r['collected_success_rate']:.0f}%, {100 * r['correction_rate']:.0f}%")
        t.add_row(str(r["round"]), r["version"], f"{100 * r['success_rate']:.0f}% ± {100 * r['success_se']:.0f}",
                  f"{r['throughput_per_h']:.0f}", f"{r['mean_steps']:.0f}", coll, _effort(r), _mistake(r), _gates(r),
                  " ".join(v or "-" for _, v in sorted(r["robot_versions"].items())))
    return t


class View:
    def __init__(self, live: bool | None = None):
        self.live = sys.stdout.isatty() if live is None else live
        self.console = Console() if self.live else Console(width=160)  # logs: room for the round table
        self._lock = threading.Lock()
        self._phase = ""
        self._robots: dict[str, str] = {}
        self._progress: tuple[str, int, int] | None = None
        self._run: dict | None = None
        self._records: list[dict] = []
        self._log: list[str] = []
        self._t0 = time.monotonic()
        self._live: Live | None = None

    def __enter__(self) -> "View":
        if self.live:
            self._live = Live(self._render(), console=self.console, refresh_per_second=4, get_renderable=self._render)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live:
            self._live.__exit__(*exc)
            self._live = None

    def _elapsed(self) -> str:
        s = int(time.monotonic() - self._t0)
        return f"{s // 60:02d}:{s % 60:02d}"

    def _plain(self, msg: str) -> None:
        if not self.live:
            print(f"[{self._elapsed()}] {msg}", flush=True)

    def phase(self, text: str) -> None:
        with self._lock:
            self._phase, self._progress, self._run = text, None, None
        self._plain(f"== {text}")

    def robot(self, robot: str, text: str) -> None:
        with self._lock:
            self._robots[robot] = text

    def progress(self, what: str, done: int, total: int) -> None:
        with self._lock:
            self._progress = (what, done, total)
        if done == total or done % 10 == 0:
            self._plain(f"{what}: {done}/{total} episodes")

    def run(self, run: dict) -> None:
        with self._lock:
            last = self._run
            self._run = run
        if last is None or last["phase"] != run["phase"] or run["status"] != last["status"]:
            self._plain(f"run {run['id']}: {run['status']} {run['phase']} {100 * run['progress']:.0f}%")

    def log(self, text: str) -> None:
        with self._lock:
            self._log = (self._log + [f"[{self._elapsed()}] {text}"])[-8:]
        self._plain(text)

    def table(self, records: list[dict]) -> None:
        with self._lock:
            self._records = list(records)
        if not self.live:
            self.console.print(round_table(records))
        elif self._live:
            self._live.console.print(round_table(records))

    def _render(self):
        with self._lock:
            parts = [Text(f"recap demo  {self._elapsed()}   {self._phase}", style="bold")]
            if self._robots:
                t = Table.grid(padding=(0, 2))
                for robot, text in sorted(self._robots.items()):
                    t.add_row(Text(robot, style="cyan"), text)
                parts.append(t)
            if self._progress:
                what, done, total = self._progress
                parts.append(Group(Text(f"{what}: {done}/{total} episodes"),
                                   ProgressBar(total=max(total, 1), completed=done, width=50)))
            if self._run:
                r = self._run
                parts.append(Group(Text(f"training run {r['id']} ({r['spec']['method']}): {r['status']}, {r['phase']} "
                                        f"{100 * r['progress']:.0f}%"),
                                   ProgressBar(total=1.0, completed=r["progress"], width=50)))
            if self._log:
                parts.append(Text("\n".join(self._log), style="dim"))
            return Panel(Group(*parts), title="record -> train -> deploy", border_style="blue")
