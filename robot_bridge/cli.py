"""`recap bridge …`: bring up a simulated cell (arm + scripted teleoperator + bridge, each its own
process over DDS, in the robot's namespace `/<robot>/...`), and drive episodes through the bridge's
ROS 2 services (`/<robot>/recap_bridge/start_episode`, ...): `--robot` picks the cell, so cells of
several robots on one ROS domain never answer for each other."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

import typer

from data.cli_errors import UserError
from data.home import default_store, recap_home
from data.logs import setup_logging

app = typer.Typer(help="The robot side: bring up a bridge, start and end episodes.", no_args_is_help=True)


def _url(value: str) -> str:
    """'' (none) or an http(s) URL with a host."""
    if value:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise typer.BadParameter(f"{value!r} is not an http(s)://host[:port] URL")
    return value


def _robot(value: str) -> str:
    """A robot id that names a ROS namespace."""
    from robot_bridge.ros import RobotNameError, robot_namespace

    try:
        robot_namespace(value)
    except RobotNameError as e:
        raise typer.BadParameter(str(e)) from None
    return value


Robot = typer.Option("sim-arm-0", "--robot", envvar="RECAP_ROBOT", callback=_robot,
                     help="Robot id; its nodes run in the ROS namespace /<robot> ('-' and '.' as '_').")


@app.command()
def up(task: str = typer.Option("push-v3", help="Meta-World task of the simulated arm."),
       robot: str = Robot,
       rate: float = typer.Option(30.0, min=0.1, max=1000.0, help="Control rate (Hz)."),
       inference_url: str = typer.Option("", envvar="RECAP_INFERENCE_URL", callback=_url, help="Inference server URL."),
       token: str = typer.Option("", envvar="RECAP_ROBOT_TOKEN", help="This robot's token."),
       api_url: str = typer.Option("", envvar="RECAP_API_URL", callback=_url,
                                   help="Control-plane API (episode registration)."),
       store: Optional[Path] = typer.Option(None, "--store", envvar="RECAP_STORE", show_default=False,
                                            help="Episode store [default: $RECAP_HOME/store]."),
       teleop: bool = typer.Option(True, help="Run the scripted corrective teleoperator."),
       image: int = typer.Option(0, min=0, max=2048, help="Camera image height (width 4/3 of it); 0: no camera."),
       fast: bool = typer.Option(False, help="Simulated time (/clock): the arm steps as fast as the bridge answers."),
       logs: Optional[Path] = typer.Option(None, show_default=False,
                                           help="Where each node logs [default $RECAP_HOME/logs].")):
    """Simulated arm + scripted teleoperator + bridge for a task, until Ctrl-C (stops them all)."""
    from robot_bridge.cell import CellSpec
    from services.launch import start_process, stop_together
    from training.sim.arm import unknown_tasks  # the simulated arm's own task list

    if unknown_tasks([task]):
        raise typer.BadParameter(f"unknown Meta-World task {task!r} (e.g. push-v3, pick-place-v3)", param_hint="--task")
    store = store or default_store()
    logs = logs or recap_home() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    cell = CellSpec(robot=robot, task=task, rate_hz=rate, store=store, inference_url=inference_url, token=token,
                    api_url=api_url, teleop=teleop, image=image, fast=fast)
    # each node in its own process group, registered with this process's reaper: the nodes end with
    # this command however it ends, SIGKILL included (services/reaper.py)
    procs = {n: start_process(n, cmd, logs, {}) for n, cmd in cell.commands().items()}
    typer.echo(f"up: {', '.join(f'{n} (pid {p.popen.pid})' for n, p in procs.items())} in namespace {cell.namespace}; "
               f"logs in {logs}. Ctrl-C stops.")
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        _wait_ready(procs, stop, cell.namespace, cameras=image > 0)
        while not stop["now"]:
            for n, p in procs.items():
                if not p.alive():
                    typer.echo(f"{n} exited with {p.popen.returncode}; see {p.log}", err=True)
                    stop["now"] = True
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stop_together(list(procs.values()), signal.SIGINT, timeout=10)


def _wait_ready(procs: dict, stop: dict, namespace: str, timeout: float = 180.0, cameras: bool = False) -> None:
    """Print `ready` once the arm publishes its joint state and the bridge's services answer (and, with
    `cameras`, once the bridge's ~/stats says every camera delivered a frame: it refuses to start an
    episode before): the nodes take seconds to start (first imports of MuJoCo and torch), and an
    episode started before the arm talks would record nothing."""
    import rclpy
    from sensor_msgs.msg import JointState
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    rclpy.init()
    node = rclpy.create_node("recap_bridge_up", namespace=namespace)
    heard: list[bool] = []
    node.create_subscription(JointState, "joint_states", lambda _m: heard.append(True), 10)
    frames: list[bool] = []  # the bridge's ~/stats said cameras_ready
    node.create_subscription(String, "recap_bridge/stats",
                             lambda m: frames.append(bool(json.loads(m.data).get("cameras_ready"))), 10)
    client = node.create_client(Trigger, "recap_bridge/start_episode")
    deadline = time.monotonic() + timeout
    try:
        while not stop["now"] and time.monotonic() < deadline and all(p.alive() for p in procs.values()):
            rclpy.spin_once(node, timeout_sec=0.1)
            if heard and client.service_is_ready() and (not cameras or any(frames)):
                settle = time.monotonic() + 1.0  # the bridge's own discovery of the arm lags ours a little
                while time.monotonic() < settle:
                    rclpy.spin_once(node, timeout_sec=0.1)
                typer.echo("ready: the arm publishes" + (", the cameras deliver" if cameras else "")
                           + " and the bridge answers")
                return
        if not stop["now"] and all(p.alive() for p in procs.values()):
            what = "no joint state, no bridge service" + (" or no camera frame" if cameras else "")
            typer.echo(f"not ready after {timeout:.0f} s ({what}); see the logs", err=True)
    finally:
        node.destroy_node()
        rclpy.shutdown()


def _call(service: str, srv_type, request, timeout: float):
    import rclpy

    rclpy.init()
    node = rclpy.create_node("recap_cli")
    try:
        cli = node.create_client(srv_type, service)
        if not cli.wait_for_service(timeout_sec=timeout):
            raise UserError(f"{service}: no bridge answering within {timeout:g} s "
                            "(is `recap bridge up` running for this --robot, same ROS_DOMAIN_ID?)")
        fut = cli.call_async(request)
        rclpy.spin_until_future_complete(node, fut, timeout_sec=timeout)
        if not fut.done():
            raise UserError(f"{service}: the bridge did not answer within {timeout:g} s")
        return fut.result()
    finally:
        node.destroy_node()
        rclpy.shutdown()


Wait = typer.Option(20.0, "--wait", min=0.1, help="Seconds to wait for the bridge to answer.")
Node = typer.Option(None, "--node", show_default=False,
                    help="The bridge's full node name [default: /<robot namespace>/recap_bridge].")


def _bridge(robot: str, node: str | None) -> str:
    from robot_bridge.ros import robot_namespace

    return node or f"{robot_namespace(robot)}/recap_bridge"


@app.command()
def start(robot: str = Robot, node: Optional[str] = Node,
          demonstration: bool = typer.Option(False, help="A demonstration: the teleoperator drives the whole "
                                                         "episode (recorded as demonstration, no policy)."),
          wait: float = Wait):
    """Start an episode (task and instruction: the bridge's parameters)."""
    from std_srvs.srv import Trigger

    service = "start_demonstration" if demonstration else "start_episode"
    r = _call(f"{_bridge(robot, node)}/{service}", Trigger, Trigger.Request(), wait)
    typer.echo(("started " if r.success else "refused: ") + r.message)
    raise typer.Exit(0 if r.success else 1)


@app.command()
def end(success: bool = typer.Option(..., "--success/--failure", help="The episode's outcome."),
        robot: str = Robot, node: Optional[str] = Node, wait: float = Wait):
    """End the running episode with its outcome (commits it; registration follows)."""
    from std_srvs.srv import SetBool

    r = _call(f"{_bridge(robot, node)}/end_episode", SetBool, SetBool.Request(data=success), wait)
    typer.echo(("committed " if r.success else "refused: ") + r.message)
    raise typer.Exit(0 if r.success else 1)


@app.command()
def ship(store: Optional[Path] = typer.Option(None, "--store", envvar="RECAP_STORE", show_default=False,
                                              help="The robot's episode store [default: $RECAP_HOME/store]."),
         api_url: str = typer.Option("", "--api", envvar="RECAP_API_URL", callback=_url, help="Central API URL."),
         token: str = typer.Option("", envvar="RECAP_ROBOT_TOKEN", help="This robot's token (role robot)."),
         rate: float = typer.Option(0.0, min=0.0, help="Bandwidth cap in bytes/s (0: unlimited)."),
         chunk: int = typer.Option(4 << 20, "--chunk-bytes", min=4096, max=16 << 20, help="Bytes per chunk."),
         keep_newest: int = typer.Option(20, min=0, help="Retention: always keep this many newest episodes here."),
         keep_hours: float = typer.Option(24.0, min=0.0, help="Retention: keep episodes younger than this here."),
         poll: float = typer.Option(5.0, min=0.1, help="Seconds between looks for newly committed episodes."),
         once: bool = typer.Option(False, help="Ship what is pending, apply retention and exit (1: some left)."),
         status: bool = typer.Option(False, help="Print the backlog (episodes, bytes pending) and exit.")):
    """Ship this robot's committed episodes to the central store, in the background, until stopped:
    resumable, sha256-verified, idempotent, paced to --rate; local copies go only once confirmed and
    past retention."""
    import json

    from data.cli_errors import user_errors
    from data.store import StoreError
    from robot_bridge.shipper import EpisodeShipper, ShipDeferred, ShipperConfig, backlog

    user_errors(StoreError)  # e.g. --store names no episode store
    store = store or default_store()
    if status:
        typer.echo(json.dumps(backlog(store)))
        return
    if not api_url or not token:
        raise UserError("shipping needs the central API's URL (--api or RECAP_API_URL) and this robot's token "
                        "(--token or RECAP_ROBOT_TOKEN)")
    setup_logging()  # httpx quiet: a line per chunk otherwise
    cfg = ShipperConfig(api_url=api_url, token=token, store_root=store, rate_bytes_s=rate, chunk_bytes=chunk,
                        keep_newest=keep_newest, keep_hours=keep_hours, poll_s=poll)
    shipper = EpisodeShipper(cfg)
    typer.echo(f"shipper: {json.dumps({k: str(v) for k, v in vars(cfg).items() if k != 'token'})}", err=True)
    if once:
        try:
            shipper.run_once()
        except ShipDeferred as e:
            raise UserError(f"shipping deferred: {e}") from None
        finally:
            shipper.stop()
        left = backlog(store)
        typer.echo(json.dumps(left))
        raise typer.Exit(1 if left["episodes"] else 0)
    signal.signal(signal.SIGTERM, lambda *_: shipper._stop.set())
    try:
        shipper.run()
    except KeyboardInterrupt:
        pass
    finally:
        shipper.stop()


if __name__ == "__main__":
    from data import cli_errors
    from data.cli_root import click_command

    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    cli_errors.run(click_command(app))
