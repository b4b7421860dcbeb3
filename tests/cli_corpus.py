"""Bad `recap` invocations across every command group, each run as its own process the way a user
runs it: a bad path, size, method, URL or JSON recipe; a selection that matches nothing; an
unknown episode, run or version; a missing or wrong token; an API, Redis or bridge that does not
answer. Each must end with exit status 2 and exactly one `error: ...` line on stderr, never a
traceback. Shared by tests/test_cli_errors.py (which forks the processes from one that has imported
the command groups, `forked_runs`) and bench/probes/cli.py (fresh processes, as timed by users).

Nothing here downloads or starts a service: API cases talk to a running API (the `stack` of
tests/services/conftest.py) or to a closed port; the ROS case waits half a second for a bridge
that is not there, on a domain of its own.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECAP = [sys.executable, "-m", "data.cli_root"]
MISSING_EPISODE = "20990101T000000-nobody-000000"
GROUPS = ("data", "train", "serve", "fleet", "runs", "tokens", "episodes", "bridge", "demo")


@dataclass(frozen=True)
class Invocation:
    args: tuple[str, ...]  # `{name}` fields are filled from `prepare`
    why: str
    env: tuple[tuple[str, str], ...] = ()

    @property
    def group(self) -> str:
        """The command group invoked, or `root` for the root's own errors."""
        first = next(a for a in self.args if not a.startswith("-"))
        return first if first in GROUPS and self.args[0] == first else "root"


def bad(why: str, *args: str, **env: str) -> Invocation:
    return Invocation(tuple(args), why, tuple(env.items()))


API = ("--api", "{api}")
DOWN = ("--api", "{down}")
CORPUS: list[Invocation] = [
    # root
    bad("unknown group", "nope"),
    bad("unknown root option", "--bogus", "data", "ls"),
    # data
    bad("store path that does not exist", "data", "ls", "--store", "{missing}"),
    bad("store path that is a file", "data", "fsck", "--store", "{a_file}"),
    bad("date that is not ISO", "data", "ls", "--store", "{store}", "--since", "yesterday"),
    bad("negative limit", "data", "ls", "--store", "{store}", "--limit", "-1"),
    bad("catalog URL with an unknown dialect", "data", "ls", "--store", "{store}", "--catalog", "nosuchdb://x"),
    bad("catalog server not answering", "data", "ls", "--store", "{store}", "--catalog", "postgresql://u@127.0.0.1:{closed}/db"),
    bad("unknown episode", "data", "show", MISSING_EPISODE, "--store", "{store}"),
    bad("label of an unknown episode", "data", "label", MISSING_EPISODE, "success", "--by", "a", "--store", "{store}"),
    bad("unknown outcome", "data", "label", "{episode}", "maybe", "--by", "a", "--store", "{store}"),
    bad("size that is not HxW", "data", "record-synthetic", "--store", "{work}/new-store", "--size", "32"),
    bad("size with a zero side", "data", "record-synthetic", "--store", "{work}/new-store", "--size", "0x32"),
    bad("zero ticks", "data", "record-synthetic", "--store", "{work}/new-store", "--ticks", "0"),
    bad("export selection matching nothing", "data", "export", "{work}/export", "--store", "{store}", "--robot", "nobody"),
    bad("stats selection matching nothing", "data", "stats", "{work}/stats.json", "--store", "{store}", "--task", "nothing"),
    bad("import from a folder that does not exist", "data", "import", "{missing}", "--robot", "r", "--store", "{work}/imp"),
    bad("import from a folder that is not a dataset", "data", "import", "{work}", "--robot", "r", "--store", "{work}/imp"),
    # train
    bad("unknown method", "train", "policy", "--store", "{store}", "--method", "nope"),
    bad("selection matching nothing", "train", "policy", "--store", "{store}", "--robot", "nobody"),
    bad("malformed --max-len", "train", "policy", "--store", "{store}", "--max-len", "push"),
    bad("unknown positive-share cap", "train", "policy", "--store", "{store}", "--positive-cap", "successes"),
    bad("store that does not exist", "train", "policy", "--store", "{missing}"),
    bad("value selection matching nothing", "train", "value", "{work}/value", "--store", "{store}", "--task", "nothing"),
    bad("export of a run that does not exist", "train", "export", "{missing}", "{work}/run-export", "--store", "{store}"),
    bad("unknown sim method", "train", "round", "{work}/round", "--method", "nope"),
    bad("unknown Meta-World task", "train", "round", "{work}/round", "--tasks", "nope-v3"),
    # serve
    bad("port out of range", "serve", "api", "--port", "99999"),
    bad("port that is not a number", "serve", "inference", "--port", "abc"),
    bad("Redis not answering", "serve", "worker", "--burst", RECAP_REDIS_URL="redis://127.0.0.1:{closed}/0"),
    # fleet
    bad("API not answering", "fleet", "robots", *DOWN, "--token", "t"),
    bad("API URL without a scheme", "fleet", "deploy", "v1", "--api", "not-a-url", "--token", "t"),
    bad("missing token", "fleet", "versions", *API),
    bad("unknown version", "fleet", "deploy", "v999", *API, "--token", "{operator}"),
    bad("role that may not deploy", "fleet", "deploy", "v1", *API, "--token", "{researcher}"),
    bad("register an artifact that does not exist", "fleet", "register", "{missing}", *API, "--token", "{researcher}"),
    # runs
    bad("recipe that is not JSON", "runs", "start", "--recipe", "{{", *API, "--token", "{researcher}"),
    bad("recipe that is not an object", "runs", "start", "--recipe", "[1]", *API, "--token", "{researcher}"),
    bad("unknown method through the API", "runs", "start", "--method", "nope", *API, "--token", "{researcher}"),
    bad("unknown run", "runs", "show", "no-such-run", *API, "--token", "{researcher}"),
    bad("wrong token", "runs", "ls", *API, "--token", "rcp_wrong"),
    # tokens
    bad("unknown role", "tokens", "create", "x", "--role", "boss", *API, "--token", "{admin}"),
    bad("API URL with another protocol", "tokens", "ls", "--api", "ftp://127.0.0.1", "--token", "t"),
    bad("missing token name", "tokens", "revoke", *API, "--token", "{admin}"),
    # episodes
    bad("upload of a path that does not exist", "episodes", "upload", "{missing}", *API, "--token", "{teleoperator}"),
    bad("limit of zero", "episodes", "ls", "--limit", "0", *API, "--token", "{teleoperator}"),
    bad("label of an unknown episode through the API", "episodes", "label", MISSING_EPISODE, "success", *API,
        "--token", "{teleoperator}"),
    # bridge
    bad("control rate of zero", "bridge", "up", "--rate", "0"),
    bad("unknown simulated task", "bridge", "up", "--task", "nope-v3"),
    bad("inference URL that is not a URL", "bridge", "up", "--inference-url", "not-a-url"),
    bad("end without an outcome", "bridge", "end"),
    bad("no bridge answering", "bridge", "start", "--wait", "0.5"),
    bad("shipping from a store that does not exist", "bridge", "ship", "--store", "{missing}", *API, "--token", "x"),
    bad("shipping without the API's URL", "bridge", "ship", "--store", "{store}", "--token", "x"),
    bad("shipping at a negative rate", "bridge", "ship", "--store", "{store}", *API, "--token", "x", "--rate", "-1"),
    # demo
    bad("no robots", "demo", "--robots", "0", "--out", "{work}/demo"),
    bad("unknown demo task", "demo", "--tasks", "nope-v3", "--out", "{work}/demo"),
    bad("output folder that is a file", "demo", "--out", "{a_file}"),
    bad("unknown demo policy", "demo", "--policy", "pi9", "--out", "{work}/demo"),
    bad("demo camera not HxW", "demo", "--policy", "act", "--camera", "96", "--out", "{work}/demo"),
    bad("demo setting that does not exist", "demo", "--set", "nope=1", "--out", "{work}/demo"),
    bad("demo policy setting its type does not have", "demo", "--policy", "act", "--set", "policy.hidden=3",
        "--out", "{work}/demo"),
]


@dataclass
class Result:
    invocation: Invocation
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    error_lines: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.error_lines = [line for line in self.stderr.splitlines() if line.strip()]

    @property
    def traceback(self) -> bool:
        return "Traceback" in self.stdout + self.stderr

    @property
    def ok(self) -> bool:
        return (self.returncode == 2 and not self.traceback and len(self.error_lines) == 1
                and self.error_lines[0].startswith("error: ") and len(self.error_lines[0]) > len("error: "))

    def describe(self) -> str:
        return f"{self.invocation.why}: `recap {' '.join(self.argv)}` -> {self.returncode}\n{self.stderr[-2000:]}"


def cli_env(work: Path, **extra: str) -> dict[str, str]:
    """A user's environment: this checkout importable, state under `work`, offline, a ROS domain of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECAP_")}
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
               RECAP_HOME=str(work / "home"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               ROS_DOMAIN_ID=str(random.randint(150, 230)), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    env.update(extra)
    return env


def recap(args: list[str], work: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(RECAP + args, capture_output=True, text=True, cwd=work, env=cli_env(work, **env),
                          timeout=timeout)


def prepare(work: Path, api_url: str, tokens: dict[str, str]) -> dict[str, str]:
    """The places and names the corpus refers to: a small store with two episodes, a file, a path
    that does not exist, a closed port, the API and a token per role."""
    from data.store import EpisodeStore
    from services.launch import free_port

    work.mkdir(parents=True, exist_ok=True)
    store = work / "store"
    made = recap(["data", "record-synthetic", "--store", str(store), "--episodes", "2", "--ticks", "5",
                  "--size", "8x8", "--cameras", "1", "--fps", "0", "--robot", "arm-1"], work)
    assert made.returncode == 0, made.stdout + made.stderr
    episode = EpisodeStore(store, create=False).episode_ids()[0]
    (work / "a_file").write_text("not a store\n")
    closed = free_port()
    return {"work": str(work), "store": str(store), "missing": str(work / "does-not-exist"), "a_file": str(work / "a_file"),
            "closed": str(closed), "down": f"http://127.0.0.1:{closed}", "api": api_url, "episode": episode, **tokens}


def run_corpus(work: Path, api_url: str, tokens: dict[str, str], workers: int = 4,
               corpus: list[Invocation] = CORPUS, shared_start: bool = False) -> list[Result]:
    """Every invocation as a fresh process, `workers` at a time. `shared_start`: forked from one
    process that has imported the command groups, torch and Meta-World once (`forked_runs`), instead
    of each starting Python and importing them (~3-6 s of CPU per invocation)."""
    names = prepare(work, api_url, tokens)
    runs = [([a.format(**names) for a in inv.args], {k: v.format(**names) for k, v in inv.env}) for inv in corpus]
    if shared_start:
        done = forked_runs(work, runs, workers)
        return [Result(inv, argv, *d) for inv, (argv, _), d in zip(corpus, runs, done)]

    def one(inv: Invocation, argv: list[str], env: dict[str, str]) -> Result:
        t0 = time.monotonic()
        p = recap(argv, work, **env)
        return Result(inv, argv, p.returncode, p.stdout, p.stderr, time.monotonic() - t0)

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, corpus, *zip(*runs)))


def forked_runs(work: Path, runs: list[tuple[list[str], dict[str, str]]], workers: int,
                timeout: float = 600) -> list[tuple[int, str, str, float]]:
    """(exit status, stdout, stderr, seconds) of `recap ARGS` with extra environment, for each run,
    each in its own process forked from one that imported what the commands import (`_fork_server`):
    the process runs `recap` from there as `python -m data.cli_root` would, in the user's environment
    (`cli_env`) with its own stdin, stdout and stderr, and ends as a forked multiprocessing child does
    (no interpreter teardown). The forking process must itself print nothing, so an import that warns
    still shows."""
    out = work / "forked"
    out.mkdir(parents=True, exist_ok=True)
    requests = [{"argv": argv, "env": cli_env(work, **env), "cwd": str(work), "stdout": str(out / f"{i}.out"),
                 "stderr": str(out / f"{i}.err")} for i, (argv, env) in enumerate(runs)]
    p = subprocess.run([sys.executable, "-m", "tests.cli_corpus", str(workers)], input=json.dumps(requests),
                       capture_output=True, text=True, cwd=work, env=cli_env(work), timeout=timeout)
    assert p.returncode == 0 and p.stderr == "", p.stderr[-3000:]
    return [(code, Path(r["stdout"]).read_text(), Path(r["stderr"]).read_text(), seconds)
            for r, (code, seconds) in zip(requests, json.loads(p.stdout))]


def _fork_server(workers: int) -> None:
    """`python -m tests.cli_corpus N`: import every command group and what the commands import when
    they run, then run each request of the JSON list on stdin in a forked child, N at a time; print
    [exit status, seconds] per request."""
    import atexit
    import gc
    import threading
    from importlib.metadata import entry_points

    import metaworld  # noqa: F401  (the simulated tasks' names)
    import torch  # noqa: F401

    from data import cli_root

    for ep in entry_points(group="recap.cli"):
        ep.load()
    requests = json.loads(sys.stdin.read())
    assert threading.active_count() == 1, "a thread at fork: the children could deadlock"
    gc.freeze()  # the children's collections then leave the imported objects (and their shared pages) alone
    results: list = [None] * len(requests)
    running: dict[int, tuple[int, float]] = {}

    def reap() -> None:
        pid, status = os.wait()
        i, t0 = running.pop(pid)
        results[i] = [os.waitstatus_to_exitcode(status), time.monotonic() - t0]

    for i, req in enumerate(requests):
        while len(running) >= workers:
            reap()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child becomes `recap ARGS`
            os.chdir(req["cwd"])
            os.environ.clear()
            os.environ.update(req["env"])
            for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, req["stdout"], os.O_WRONLY | os.O_CREAT),
                                    (2, req["stderr"], os.O_WRONLY | os.O_CREAT)):
                f = os.open(path, flags, 0o644)
                os.dup2(f, fd)
                os.close(f)
            sys.argv = [cli_root.__file__, *req["argv"]]
            code = None
            try:
                cli_root.main()
            except SystemExit as e:  # how `recap` ends (any other exception ends the child with its traceback)
                code = e.code
            if code is not None and not isinstance(code, int):  # sys.exit("message"): printed, status 1
                print(code, file=sys.stderr)
                code = 1
            # then as multiprocessing's forked children end: exit handlers run, streams flushed, and no
            # interpreter teardown (freeing everything the server imported would copy each shared page)
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code or 0)
        running[pid] = (i, time.monotonic())
    while running:
        reap()
    print(json.dumps(results))


def help_seconds(work: Path, tries: int = 3) -> float:
    """Wall time of `recap --help` in a fresh process, best of `tries` (the machine's load is not the CLI's)."""
    work.mkdir(parents=True, exist_ok=True)
    best = float("inf")
    for _ in range(tries):
        t0 = time.perf_counter()
        p = recap(["--help"], work, timeout=60)
        best = min(best, time.perf_counter() - t0)
        assert p.returncode == 0, p.stderr
    return best


if __name__ == "__main__":
    _fork_server(int(sys.argv[1]))
