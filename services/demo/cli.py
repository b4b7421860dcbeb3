"""`recap demo`: start the whole stack on this machine and run record -> train -> deploy rounds on
simulated arms through it; results in `demo_out/` (report.html, plots, results.json, logs/)."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import typer

from services.demo.config import VLM_DIR, DemoConfig, preset
from training.sim.rounds import POLICY_KINDS

app = typer.Typer(help="The full loop on simulated arms through the real stack (Redis, API, worker, inference, "
                       "ROS 2 bridges). Ctrl-C stops every process.", invoke_without_command=True)


def _camera(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    h, sep, w = text.lower().partition("x")
    if not (sep and h.isdigit() and w.isdigit() and 16 <= int(h) <= 480 and 16 <= int(w) <= 640):
        raise typer.BadParameter(f"{text!r}: expected HxW in pixels, e.g. 96x128 (16..480 x 16..640)",
                                 param_hint="--camera")
    return int(h), int(w)


_NOT_SETTABLE = {"tasks", "robots", "rounds", "policy_kind", "camera", "value", "policy"}  # options of their own
_POSITIVE = {"max_steps", "demos_per_robot", "eval_per_robot", "rate_hz", "stall_s", "canary_episodes", "gate_batches"}


def _set(cfg: DemoConfig, item: str) -> None:
    """--set KEY=VALUE: a field of the demo's config (episodes per phase, max_steps, ...) or of the
    recipe's value / policy section (value.steps, policy.steps, policy.dim_model, ...); VALUE is JSON."""
    import dataclasses

    from training.policies.registry import RecipeError, validate_policy_recipe
    from training.value.configuration_value import ValueConfig

    key, eq, raw = item.partition("=")
    if not eq or not key or not raw:
        raise typer.BadParameter(f"{item!r}: expected KEY=VALUE, e.g. eval_per_robot=10 or policy.steps=300",
                                 param_hint="--set")
    try:
        val = json.loads(raw)
    except ValueError:
        val = raw
    section, dot, name = key.partition(".")
    if dot and section == "policy":
        try:
            validate_policy_recipe({**cfg.policy, name: val})
        except RecipeError as e:
            raise typer.BadParameter(f"{item!r}: {e}", param_hint="--set") from None
        cfg.policy[name] = val
    elif dot and section == "value":
        fields = {f.name: f for f in dataclasses.fields(ValueConfig)}
        if name not in set(fields) - {"state_dim", "cameras", "image_size", "seed"}:
            raise typer.BadParameter(f"{item!r}: {name!r} is not a setting of the value function", param_hint="--set")
        if fields[name].default is not dataclasses.MISSING:
            _check_kind(item, name, cfg.value.get(name, fields[name].default), val)
        cfg.value[name] = val
    else:
        fields = {f.name: f for f in dataclasses.fields(cfg)}
        if dot or key not in fields or key in _NOT_SETTABLE:
            raise typer.BadParameter(f"{item!r}: {key!r} is not a setting of the demo (e.g. demos_per_robot, "
                                     "collect_per_robot, eval_per_robot, max_steps, policy.KEY, value.KEY)",
                                     param_hint="--set")
        _check_kind(item, key, getattr(cfg, key), val, positive=key in _POSITIVE)
        setattr(cfg, key, val)


def _check_kind(item: str, key: str, old, val, positive: bool = False) -> None:
    """VALUE of the same kind as the setting's default: numbers >= 0 (> 0 where zero makes no sense)."""
    if type(old) in (int, float):
        if isinstance(val, bool) or not isinstance(val, (int, float)) or (type(old) is int and not isinstance(val, int)) \
                or val < 0 or (positive and val == 0) or val != val or val in (float("inf"), float("-inf")):
            raise typer.BadParameter(f"{item!r}: {key} takes {'an integer' if type(old) is int else 'a number'} "
                                     f"{'> 0' if positive else '>= 0'} (now {old})", param_hint="--set")
    elif type(old) in (dict, list, bool, str) and type(val) is not type(old):
        raise typer.BadParameter(f"{item!r}: {key} takes a JSON {type(old).__name__}", param_hint="--set")


def _config(quick: bool, rounds: int | None, tasks: str | None, robots: int | None, policy: str = "native",
            camera: str | None = None, out: Path = Path("demo_out"), sets: list[str] = ()) -> DemoConfig:
    if policy not in POLICY_KINDS:
        raise typer.BadParameter(f"unknown policy {policy!r} (one of {', '.join(POLICY_KINDS)})", param_hint="--policy")
    cfg = preset(quick, policy, _camera(camera), out)
    if rounds is not None:
        cfg.rounds = rounds
    if tasks:
        cfg.tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    if robots is not None:
        cfg.robots = robots
    for item in sets:
        _set(cfg, item)
    if cfg.robots < 1 or cfg.rounds < 0:
        raise typer.BadParameter("need at least one robot and zero or more rounds")
    if not 0.5 <= cfg.gate_threshold < 1.0:
        raise typer.BadParameter(f"gate_threshold={cfg.gate_threshold}: a probability in [0.5, 1)", param_hint="--set")
    if cfg.rollback_drill_round > cfg.rounds:
        raise typer.BadParameter(f"rollback_drill_round={cfg.rollback_drill_round}: there are {cfg.rounds} rounds",
                                 param_hint="--set")
    if len(cfg.tasks) > cfg.robots:
        raise typer.BadParameter(f"{len(cfg.tasks)} tasks need at least as many robots (each simulated arm runs one task)")
    from training.sim.arm import unknown_tasks

    unknown = unknown_tasks(cfg.tasks)
    if unknown:
        raise typer.BadParameter(f"unknown Meta-World task {unknown[0]!r} (e.g. push-v3, pick-place-v3, peg-insert-side-v3)")
    return cfg


def _raise_interrupt(*_):
    raise KeyboardInterrupt


@app.callback()
def demo(out: Path = typer.Option(Path("demo_out"), help="Where everything goes (report.html, logs/, home/)."),
         rounds: int = typer.Option(None, help="RECAP rounds after the first fit (default 3; quick and image policies 1)."),
         tasks: str = typer.Option(None, help="Comma-separated Meta-World tasks, one per robot in turn (default push-v3)."),
         robots: int = typer.Option(None, help="Simulated robots (default 2)."),
         quick: bool = typer.Option(False, help="A few minutes: fewer episodes, smaller models, 1 round."),
         policy: str = typer.Option("native", help="The policy the rounds train and serve: native (state only), "
                                                   "act (LeRobot ACT on the camera) or smolvla-tiny (LeRobot SmolVLA "
                                                   "on a tiny SmolVLM built locally: camera and instruction)."),
         camera: str = typer.Option(None, help="HxW of the arms' rendered camera (default 96x128 for act and "
                                               "smolvla-tiny; none for native)."),
         sets: list[str] = typer.Option(None, "--set", metavar="KEY=VALUE",
                                        help="Override a setting (repeatable): a field of the demo's config, e.g. "
                                             "eval_per_robot=10, max_steps=150, or of the recipe, e.g. "
                                             "policy.steps=300, value.steps=200."),
         fresh: bool = typer.Option(False, help="Start over (deletes OUT); by default a re-run continues after "
                                               "the last finished phase."),
         ros_domain: int = typer.Option(40, min=0, max=232,
                                        help="First ROS domain the robots may take: each robot takes the next free "
                                             "one, up to 99 (the tests use 100 and up)."),
         live: bool = typer.Option(None, help="Live screen (default: when stdout is a terminal).")):
    """Record demonstrations -> first fit -> deploy -> (collect with corrections -> RECAP run -> canary ->
    fleet -> evaluate) x ROUNDS, every step through the public API and ROS 2 topics. With --policy act or
    smolvla-tiny the arms render a camera, the episodes record it and the rounds train and serve that
    LeRobot backbone (a smaller preset: 1 round, fewer episodes)."""
    from services.demo.loop import DemoLoop
    from services.demo.stack import DemoStack, StackError
    from services.demo.view import View, round_table

    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the progress
    cfg = _config(quick, rounds, tasks, robots, policy, camera, out, sets or [])
    state_file = out / "state.json"
    state = {}
    if fresh and out.exists():
        shutil.rmtree(out)
    if state_file.exists():
        state = json.loads(state_file.read_text())
        if state.get("config") != cfg.to_dict():
            typer.echo(f"{out} holds a demo with another configuration; run with --fresh to start over, or "
                       "with the same options to continue", err=True)
            raise typer.Exit(2)
    out.mkdir(parents=True, exist_ok=True)
    state["config"] = cfg.to_dict()
    if cfg.policy_kind == "smolvla-tiny":  # its SmolVLM config, tokenizer and processor, built here (no hub)
        from training.policies.lerobot_adapter.tiny import tiny_smolvlm
        from training.sim.arm import task_instruction

        tiny_smolvlm(out / VLM_DIR, [task_instruction(t) for t in cfg.tasks])
    signal.signal(signal.SIGTERM, _raise_interrupt)
    # Ctrl-C stops the demo even when it was started from a background job, which inherits SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    t0 = time.monotonic()
    stack = DemoStack(out, cfg, ros_domain=ros_domain, state=state)
    code = 0
    with View(live) as view:
        loop = DemoLoop(stack, cfg, out, view)
        try:
            view.phase("starting Redis, the API, a training worker, the inference server and the robots")
            stack.start(say=view.log)
            loop.save()
            records = loop.run()
            report = _report(stack, loop, out, cfg, records, time.monotonic() - t0)
            if state.get("recoveries"):
                view.log(_recoveries(state["recoveries"], loop.stopped))
            view.phase(f"done in {(time.monotonic() - t0) / 60:.1f} min: {report}")
        except KeyboardInterrupt:
            view.log("interrupted: stopping every process (a re-run continues from the last finished phase)")
            loop.interrupt()
            code = 130
        except StackError as e:
            view.log(f"error: {e}")
            code = 1
        finally:
            errors = stack.errors()
            stack.stop()
    if state.get("records"):
        view.console.print(round_table(state["records"]))
    if errors:
        typer.echo("processes that logged errors (see " + str(out / "logs") + "):", err=True)
        for name, lines in errors.items():
            typer.echo(f"  {name}: {lines[-1][:200]}", err=True)
    raise typer.Exit(code)


def _recoveries(recoveries: list[dict], stopped: dict[str, str]) -> str:
    robots = sorted({x["robot"] for x in recoveries})
    line = (f"recoveries: {len(recoveries)} episode(s) aborted and run again after a robot got stuck or lost a node "
            f"({', '.join(robots)})")
    return line + (f"; stopped: {', '.join(stopped)}" if stopped else "")


def _report(stack, loop, out: Path, cfg: DemoConfig, records: list[dict], elapsed: float) -> Path:
    from services.demo.report import write_report

    runs = {}
    with stack.client("researcher") as c:
        versions = c.get("/v1/versions").json()
        for run_id in loop.state.get("runs", {}).values():
            runs[run_id] = c.get(f"/v1/runs/{run_id}").json()
            png = c.get(f"/v1/runs/{run_id}/curves.png")
            if png.status_code == 200:
                (out / "plots").mkdir(parents=True, exist_ok=True)
                (out / "plots" / f"{run_id}-curves.png").write_bytes(png.content)
        deployments = c.get("/v1/deployments").json()
    mine = set(loop.state["versions"].values())
    return write_report(out, cfg.to_dict(), records, [v for v in versions if v["id"] in mine], runs,
                        deployments, elapsed, gates=loop.state.get("gates", []))
