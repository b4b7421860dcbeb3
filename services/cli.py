"""`recap serve …` starts the service processes; `recap fleet …`, `recap runs …`, `recap tokens …`
talk to the control-plane API with the caller's token (RECAP_API_URL, RECAP_TOKEN), so the CLI
can do exactly what the caller's role may do."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import typer

from data.cli_errors import UserError, user_errors
from data.logs import setup_logging
from training.recap_config import BETA_MAX  # torch-free

serve = typer.Typer(help="Start the service processes (API, inference server, training worker).",
                    no_args_is_help=True)
fleet = typer.Typer(help="Robots, policy versions and deployments (operator; `versions register`: researcher).",
                    no_args_is_help=True)
runs = typer.Typer(help="Training runs through the API (researcher).", no_args_is_help=True)
tokens = typer.Typer(help="API tokens (admin).", no_args_is_help=True)
episodes = typer.Typer(help="Episodes through the API: list, label (teleoperator), upload demos/corrections.",
                       no_args_is_help=True)

API = typer.Option(None, "--api", envvar="RECAP_API_URL", help="Control-plane URL [default: http://127.0.0.1:8000]")
TOKEN = typer.Option(None, "--token", envvar="RECAP_TOKEN", help="Your API token.")


# -- processes ---------------------------------------------------------------------------------

def _uvicorn(factory: str, host: str, port: int) -> None:
    import uvicorn

    setup_logging()
    uvicorn.run(factory, factory=True, host=host, port=port, log_level="info")


Host = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface).")


def _port(default: int):
    return typer.Option(default, min=1, max=65535, help="Port to listen on.")


@serve.command("api")
def serve_api(host: str = Host, port: int = _port(8000)):
    """The control-plane API and dashboard (RECAP_HOME, RECAP_REDIS_URL, RECAP_CONTROL_URL, RECAP_CATALOG_URL)."""
    _uvicorn("services.api.app:create_app", host, port)


@serve.command("inference")
def serve_inference(host: str = Host, port: int = _port(8001)):
    """The inference server (RECAP_REDIS_URL; RECAP_INFERENCE_DEVICE cpu|cuda; RECAP_MAX_BATCH,
    RECAP_BATCH_WAIT_MS, RECAP_BATCH_COMPANY_MS (default 10: wait that long for robots that ask again
    within it, so a saturated fleet shares full batches); RECAP_MODEL_THREAD=1 runs the model in its own thread instead of on the event loop;
    torch's CPU threads: OMP_NUM_THREADS, where 1 is often several times faster on cores shared with other work)."""
    _uvicorn("services.inference.server:create_app", host, port)


@serve.command("worker")
def serve_worker(name: str = typer.Option(None, help="Worker name (unique per host)."),
                 burst: bool = typer.Option(False, help="Exit when the queue is empty.")):
    """A training worker on the Redis queue (one per GPU or CPU box; RECAP_TRAIN_DEVICE cpu|cuda, RECAP_TRAIN_PROCS
    data-parallel processes per job under torchrun)."""
    import redis.exceptions

    from services.settings import ServiceSettings
    from services.worker import work

    user_errors(redis.exceptions.ConnectionError)  # RECAP_REDIS_URL names no running Redis
    setup_logging()
    work(ServiceSettings.from_env(), burst=burst, name=name)


# -- API client --------------------------------------------------------------------------------

def _client(api: str | None, token: str | None):
    import httpx

    if not token:
        raise UserError("an API token is needed: --token or RECAP_TOKEN")
    return httpx.Client(base_url=api or "http://127.0.0.1:8000", headers={"Authorization": f"Bearer {token}"},
                        timeout=120)


def _call(api, token, method: str, path: str, **kw):
    """One API request. Unreachable API, bad URL and 4xx answers are user errors (status 2); a 5xx is
    the server's fault (status 1)."""
    import httpx

    try:
        with _client(api, token) as c:
            r = c.request(method, path, **kw)
    except (httpx.HTTPError, httpx.InvalidURL) as e:
        raise UserError(f"cannot reach the API at {api or 'http://127.0.0.1:8000'}: {e}") from None
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail", r.text)
        except (ValueError, AttributeError):
            detail = r.text
        if r.status_code < 500:
            raise UserError(f"{r.status_code}: {detail}")
        typer.echo(f"error: {r.status_code}: {detail}", err=True)
        raise typer.Exit(1)
    return r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text


def _print(obj) -> None:
    typer.echo(json.dumps(obj, indent=1) if not isinstance(obj, str) else obj)


@tokens.command("create")
def tokens_create(name: str = typer.Argument(..., help="A name for the token (unique)."), role: str = typer.Option(..., help="teleoperator|operator|researcher|admin|robot"),
                  robot: str = typer.Option(None, help="For robot tokens: the robot id."), api: str = API,
                  token: str = TOKEN):
    """Create a token; it is printed once."""
    _print(_call(api, token, "POST", "/v1/tokens", json={"name": name, "role": role, "robot_id": robot}))


@tokens.command("ls")
def tokens_ls(api: str = API, token: str = TOKEN):
    """List tokens (names, roles, robots; never the secrets)."""
    _print(_call(api, token, "GET", "/v1/tokens"))


@tokens.command("revoke")
def tokens_revoke(name: str = typer.Argument(..., help="The token's name."), api: str = API, token: str = TOKEN):
    """Revoke a token: requests carrying it are refused from now on."""
    _print(_call(api, token, "DELETE", f"/v1/tokens/{name}"))


@fleet.command("robots")
def fleet_robots(api: str = API, token: str = TOKEN):
    """Each robot, its group, the version it should run and the one it reports."""
    for r in _call(api, token, "GET", "/v1/robots"):
        seen = f"{(time.time_ns() - r['last_seen_ns']) / 1e9:.0f} s ago" if r["last_seen_ns"] else "never"
        typer.echo(f"{r['id']:<20} {r['group']:<12} assigned {r['assigned_version'] or '-':<8} "
                   f"reports {r['reported_version'] or '-':<8} seen {seen}")


@fleet.command("add-robot")
def fleet_add_robot(robot: str = typer.Argument(..., help="Robot id."),
                    group: str = typer.Option("default", help="The robot's group (deploy --group targets it)."),
                    api: str = API, token: str = TOKEN):
    """Add a robot to the fleet, in a group."""
    _print(_call(api, token, "POST", "/v1/robots", json={"id": robot, "group": group}))


@fleet.command("versions")
def fleet_versions(api: str = API, token: str = TOKEN):
    """Registered policy versions with their run, parent, method and first metrics."""
    for v in _call(api, token, "GET", "/v1/versions"):
        typer.echo(f"{v['id']:<6} run {v['run_id'] or '-':<18} parent {v['parent_version'] or '-':<6} "
                   f"{v['lineage'].get('method', '')} {json.dumps({k: v['metrics'][k] for k in list(v['metrics'])[:3]})}")


@fleet.command("register")
def fleet_register(artifact_dir: Path = typer.Argument(..., help="The policy artifact's directory (on the API's machine)."),
                   parent: str = typer.Option(None, help="Parent policy version (lineage)."), api: str = API, token: str = TOKEN):
    """Register a policy artifact trained elsewhere (verified first)."""
    _print(_call(api, token, "POST", "/v1/versions", json={"artifact_dir": str(artifact_dir.resolve()),
                                                           "parent_version": parent}))


@fleet.command("deploy")
def fleet_deploy(version: str = typer.Argument(..., help="Policy version, e.g. v3."),
                 robot: str = typer.Option(None, "--canary", "--robot", help="Canary: one robot."),
                 group: str = typer.Option(None, help="A group of robots."), note: str = typer.Option("", help="Why (kept in the history)."),
                 beta: float = typer.Option(None, help=f"Serve it with this guidance strength β (0..{BETA_MAX:g}) [default: the artifact's]."),
                 gate: int = typer.Option(None, min=1, max=100_000, help="Gate the canary: after this many episodes it is "
                                          "compared with the rest of the fleet and widened or rolled back automatically."),
                 gate_threshold: float = typer.Option(0.8, min=0.5, max=0.999, help="Roll back when the probability that "
                                                      "the canary is worse reaches this."),
                 api: str = API, token: str = TOKEN):
    """Point a robot (canary), a group, or the whole fleet (default) at a version, at the artifact's
    guidance β or --beta. `--canary ROBOT --gate N`: the gate decides the rest (services/README.md)."""
    if beta is not None and not (math.isfinite(beta) and 0.0 <= beta <= BETA_MAX):
        raise typer.BadParameter(f"{beta} is not a guidance strength in [0, {BETA_MAX:g}]", param_hint="'--beta'")
    if gate is not None and not robot:
        raise typer.BadParameter("a gate needs a canary: --canary ROBOT", param_hint="'--gate'")
    kind, target, stage = ("robot", robot, "canary") if robot else ("group", group, "widen") if group else ("fleet", "*", "deploy")
    body = {"version": version, "target_kind": kind, "target": target, "stage": stage, "note": note, "beta": beta}
    if gate is not None:
        body["gate"] = {"min_episodes": gate, "threshold": gate_threshold}
    _print(_call(api, token, "POST", "/v1/deployments", json=body))


@fleet.command("rollback")
def fleet_rollback(robot: str = typer.Option(None, help="One robot."), group: str = typer.Option(None, help="A group of robots."),
                   api: str = API, token: str = TOKEN):
    """Deploy the version a robot, a group or the fleet (default) ran before."""
    kind, target = ("robot", robot) if robot else ("group", group) if group else ("fleet", "*")
    _print(_call(api, token, "POST", "/v1/deployments/rollback", json={"target_kind": kind, "target": target}))


def gate_line(g: dict) -> str:
    """One canary gate as `recap fleet history` prints it: status, what it compared, the decision's figures."""
    f = g.get("figures") or {}
    line = (f"gate #{g['id']:<3} {g['status']:<10} {g['version_id']} on {g['robot_id']} vs fleet "
            f"{g['baseline_version'] or '-'} (N={g['min_episodes']}, threshold {g['threshold']:g})")
    if "p_success_worse" in f:
        c, b = f["canary"], f["fleet"]
        line += (f": success {c['successes']}/{c['episodes']} vs {b['successes']}/{b['episodes']}, takeovers/h "
                 f"{c['takeovers_per_robot_hour']:.1f} vs {b['takeovers_per_robot_hour']:.1f}, P(worse) "
                 f"{f['p_success_worse']:.2f} / {f['p_takeovers_worse']:.2f}")
    if g.get("decision_deployment_id"):
        line += f" -> #{g['decision_deployment_id']}"
    return line + f"\n           {g['reason']}"


@fleet.command("history")
def fleet_history(api: str = API, token: str = TOKEN):
    """Every deployment, newest last: stage, target, version, who and why; then every canary gate with
    its decision and the figures it decided on (or what it still waits for)."""
    for d in reversed(_call(api, token, "GET", "/v1/deployments")):
        beta = "artifact" if d.get("beta") is None else f"{d['beta']:g}"
        gate = f" [gate #{d['gate_id']}]" if d.get("gate_id") else ""
        typer.echo(f"#{d['id']:<4} {d['stage']:<8} {d['target_kind']}:{d['target']:<14} -> {d['version_id']:<6} "
                   f"beta {beta:<8} by {d['created_by']}{gate} {d['note']}")
    for g in reversed(_call(api, token, "GET", "/v1/deployments/gates")):
        typer.echo(gate_line(g))


def _json_object(value: str) -> dict:
    try:
        obj = json.loads(value)
    except ValueError as e:
        raise typer.BadParameter(f"not JSON ({e})") from None
    if not isinstance(obj, dict):
        raise typer.BadParameter("must be a JSON object")
    return obj


@runs.command("start")
def runs_start(method: str = typer.Option("recap", help="bc|hg_dagger|filtered_bc|awr|recap"),
               robot: list[str] = typer.Option(None, help="Select episodes of these robots."),
               task: list[str] = typer.Option(None, help="... of these tasks."),
               recipe: str = typer.Option("{}", help='JSON: {"value": {...}, "policy": {...}, "recap": {...}}',
                                          callback=_json_object),
               first_fit: bool = typer.Option(False, help="Demonstrations-only first fit: indicator fixed to positive."),
               parent: str = typer.Option(None, help="Parent policy version (lineage)."),
               seed: int = typer.Option(0, help="Random seed."),
               wait: bool = typer.Option(False, help="Follow the run's progress until it ends."),
               api: str = API, token: str = TOKEN):
    """Start a training run on a catalog selection; --wait follows its progress."""
    from training.recipe import RecipeError, check_recipe

    try:  # the API checks it too; here a bad field is one line before any request
        check_recipe(recipe)
    except RecipeError as e:
        raise typer.BadParameter(str(e), param_hint="'--recipe'") from None
    body = {"method": method, "selection": {k: v for k, v in {"robot": robot, "task": task}.items() if v},
            "recipe": recipe, "first_fit": first_fit, "parent_version": parent, "seed": seed}
    run = _call(api, token, "POST", "/v1/runs", json=body)
    typer.echo(f"queued {run['id']}")
    if wait:
        from tqdm import tqdm

        with tqdm(total=100, desc=run["id"], unit="%") as bar:
            while run["status"] in ("queued", "running"):
                time.sleep(1.0)
                run = _call(api, token, "GET", f"/v1/runs/{run['id']}")
                bar.set_postfix_str(f"{run['status']} {run['phase']}")
                bar.update(int(100 * run["progress"]) - bar.n)
        typer.echo(f"{run['id']}: {run['status']} version {run['version_id']} {run['error'] or ''}")


@runs.command("ls")
def runs_ls(api: str = API, token: str = TOKEN):
    """Training runs: method, status, progress, phase, the version each produced."""
    for r in _call(api, token, "GET", "/v1/runs"):
        typer.echo(f"{r['id']:<16} {r['spec']['method']:<12} {r['status']:<10} {100 * r['progress']:5.1f}% "
                   f"{r['phase']:<8} version {r['version_id'] or '-'}")


@runs.command("show")
def runs_show(run_id: str = typer.Argument(..., help="Run id."),
              logs: bool = typer.Option(False, help="Also print the run's log."), api: str = API, token: str = TOKEN):
    """One run as JSON: spec, status, progress, metrics, error."""
    _print(_call(api, token, "GET", f"/v1/runs/{run_id}"))
    if logs:
        _print(_call(api, token, "GET", f"/v1/runs/{run_id}/logs"))


@runs.command("cancel")
def runs_cancel(run_id: str = typer.Argument(..., help="Run id."), api: str = API, token: str = TOKEN):
    """Cancel a queued or running run."""
    _print(_call(api, token, "POST", f"/v1/runs/{run_id}/cancel"))


@episodes.command("ls")
def episodes_ls(robot: list[str] = typer.Option(None, help="Only these robots (repeatable)."),
                outcome: list[str] = typer.Option(None, help="success / failure / unknown (repeatable)."),
                limit: int = typer.Option(50, min=1, help="At most this many."), api: str = API, token: str = TOKEN):
    """Episodes in the catalog: robot, task, outcome, correction rate, policy versions."""
    params = [("limit", limit)] + [("robot", r) for r in robot or []] + [("outcome", o) for o in outcome or []]
    for e in _call(api, token, "GET", "/v1/episodes", params=params):
        typer.echo(f"{e['id']:<40} {e['robot_id']:<12} {e['task_id']:<16} {e['outcome']:<8} "
                   f"corrections {100 * e['correction_rate']:4.0f}%  versions {','.join(e['policy_versions'])}")


@episodes.command("label")
def episodes_label(episode_id: str = typer.Argument(..., help="Episode id."), outcome: str = typer.Argument(..., help="success|failure|unknown"),
                   api: str = API, token: str = TOKEN):
    """Set an episode's outcome (kept in its label history with your token's name)."""
    _print(_call(api, token, "POST", f"/v1/episodes/{episode_id}/label", json={"outcome": outcome}))


@episodes.command("upload")
def episodes_upload(path: Path = typer.Argument(..., exists=True, help="A Zarr episode or LeRobot v3 dataset folder, or a tar of one."),
                    robot: str = typer.Option("upload", help="LeRobot datasets: the robot the episodes are recorded for."),
                    task: str = typer.Option(None, help="LeRobot datasets: the task id (default: from the task text)."),
                    wait: bool = typer.Option(True, help="Follow the import job until it ends."),
                    api: str = API, token: str = TOKEN):
    """Upload demonstrations or corrections; the API checks the archive at once and imports it as a job."""
    import tarfile
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        archive = path
        if path.is_dir():
            archive = Path(tmp) / "upload.tar"
            with tarfile.open(archive, "w") as tar:
                tar.add(path, arcname=path.resolve().name)
        with open(archive, "rb") as f:
            data = {"robot_id": robot} | ({"task_id": task} if task else {})
            job = _call(api, token, "POST", "/v1/episodes/upload", files={"file": ("upload.tar", f)}, data=data)
    typer.echo(f"queued {job['id']}", err=True)
    if not wait:
        _print(job)
        return
    from tqdm import tqdm

    with tqdm(total=100, desc=job["id"], unit="%", file=sys.stderr) as bar:
        while job["status"] in ("queued", "running"):
            time.sleep(0.5)
            job = _call(api, token, "GET", job["status_url"])
            bar.set_postfix_str(job["phase"])
            bar.update(int(100 * job["progress"]) - bar.n)
    if job["status"] != "finished":
        raise UserError(f"upload {job['id']} {job['status']}: {job['error']}")
    _print({"episode_ids": job["episode_ids"], "format": job["format"]})


def main() -> None:
    """`python -m services.cli worker …` (what tests and process managers run)."""
    from data import cli_errors
    from data.cli_root import click_command

    app = typer.Typer()
    app.add_typer(serve, name="serve")
    sys.argv[1:1] = ["serve"] if len(sys.argv) > 1 and sys.argv[1] in ("api", "inference", "worker") else []
    cli_errors.run(click_command(app))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
