"""What one demo run does: how many robots and tasks, episodes per phase, rounds, model sizes.
The default takes about 15 minutes on 2 CPU cores; `--quick` about 2."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class DemoConfig:
    tasks: list[str] = field(default_factory=lambda: ["push-v3"])
    robots: int = 2
    rounds: int = 3
    demos_per_robot: int = 25  # round 0: noisy demonstrations from the operator mix
    demo_mix: dict[str, float] = field(default_factory=lambda: {"clean": 0.2, "slow": 0.4, "sloppy": 0.4})
    collect_per_robot: int = 20  # each round: policy episodes with the corrective teleoperator
    eval_per_robot: int = 25  # each round: autonomous episodes on fixed layouts (the figures)
    canary_episodes: int = 2  # autonomous episodes on the canary robot before widening
    correction_budget: int = 600  # correction ticks per robot per round
    max_steps: int = 200  # episode time limit (ticks); also L for the returns
    rate_hz: float = 80.0  # Meta-World's 12.5 ms per step, on simulated time
    reset_s: float = 2.0  # robot time charged per episode for throughput (as in the benchmarks)
    stall_s: float = 30.0  # an episode whose arm makes no step for this long is stuck: aborted, the cell restarted
    retries: int = 2  # restarts of a robot's cell for one episode before the demo stops that robot
    value: dict = field(default_factory=lambda: {"steps": 1000, "hidden": 128, "ensemble": 2})
    policy: dict = field(default_factory=lambda: {"steps": 2500, "hidden": 256, "chunk": 8})
    seed: int = 0

    def task_of(self, robot_index: int) -> str:
        return self.tasks[robot_index % len(self.tasks)]

    def robot_ids(self) -> list[str]:
        return [f"sim-arm-{i}" for i in range(self.robots)]

    def recipe(self) -> dict:
        return {"value": dict(self.value), "policy": dict(self.policy),
                "task_max_len": {t: self.max_steps for t in self.tasks}}

    def to_dict(self) -> dict:
        return asdict(self)


def preset(quick: bool) -> DemoConfig:
    if not quick:
        return DemoConfig()
    return DemoConfig(rounds=1, demos_per_robot=8, collect_per_robot=4, eval_per_robot=4, canary_episodes=1,
                      correction_budget=300, value={"steps": 150, "hidden": 64, "ensemble": 2},
                      policy={"steps": 400, "hidden": 64, "chunk": 8})
