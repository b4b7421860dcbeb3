"""What one demo run does: how many robots and tasks, episodes per phase, rounds, and which policy
it trains. The round itself (layouts, time limit, operator mix, correction budget, the recipe's
value and policy presets per policy kind) is training/sim/rounds.py, shared with the benchmark.

Native policy: the default takes about 15 minutes on 2 CPU cores; `--quick` about 2. Image policies
(`--policy act`, `--policy smolvla-tiny`: a rendered camera, LeRobot backbones) run a smaller
preset (IMAGE_EPISODES, one round) so that the rounds fit in 30 minutes on 2 cores."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from training.sim.rounds import DEFAULT_CAMERA, IMAGE_KINDS, POLICY_KINDS, RoundPlan, policy_preset, value_preset

# Episodes per robot with an image policy (rendering and the ResNet / VLM cost per tick and per step).
IMAGE_EPISODES = {"full": dict(rounds=1, demos_per_robot=12, collect_per_robot=6, eval_per_robot=6, canary_episodes=2,
                               correction_budget=400),
                  "quick": dict(rounds=1, demos_per_robot=6, collect_per_robot=3, eval_per_robot=3, canary_episodes=1,
                                correction_budget=300)}
QUICK_EPISODES = dict(rounds=1, demos_per_robot=8, collect_per_robot=4, eval_per_robot=4, canary_episodes=3,
                      correction_budget=300)
VLM_DIR = "models/smolvlm-tiny"  # under the demo's out dir: the tiny SmolVLM smolvla-tiny builds on


@dataclass
class DemoConfig(RoundPlan):
    tasks: list[str] = field(default_factory=lambda: ["push-v3"])
    robots: int = 2
    demos_per_robot: int = 25  # round 0: noisy demonstrations from the operator mix
    collect_per_robot: int = 20  # each round: policy episodes with the corrective teleoperator
    eval_per_robot: int = 25  # each round: autonomous episodes on fixed layouts (the figures)
    canary_episodes: int = 6  # the gate's N: episodes per robot (canary and the rest) before it decides
    gate_threshold: float = 0.8  # roll back at this posterior probability of "worse" (services/canary.py)
    gate_batches: int = 4  # one more episode per robot while the gate cannot decide, at most this many times
    rollback_drill_round: int = 0  # in this round a deliberately worse version goes through the gate first (0: none)
    rate_hz: float = 80.0  # Meta-World's 12.5 ms per step, on simulated time
    reset_s: float = 2.0  # robot time charged per episode for throughput (as in the benchmarks)
    stall_s: float = 30.0  # an episode whose arm makes no step for this long is stuck: aborted, the cell restarted
    retries: int = 2  # restarts of a robot's cell for one episode before the demo stops that robot
    policy_kind: str = "native"  # training/sim/rounds.py POLICY_KINDS
    camera: list[int] | None = None  # [H, W] of the arms' rendered camera "front"; None: state only
    seed: int = 0

    def task_of(self, robot_index: int) -> str:
        return self.tasks[robot_index % len(self.tasks)]

    def robot_ids(self) -> list[str]:
        return [f"sim-arm-{i}" for i in range(self.robots)]

    @property
    def cameras(self) -> list[str]:
        return ["front"] if self.camera else []

    def recipe(self) -> dict:
        return {"value": dict(self.value), "policy": dict(self.policy), "task_max_len": self.task_max_len(self.tasks),
                "cameras": self.cameras}

    def to_dict(self) -> dict:
        return asdict(self)


def preset(quick: bool, policy_kind: str = "native", camera: tuple[int, int] | None = None,
           out: Path = Path("demo_out")) -> DemoConfig:
    """The demo's preset for a policy kind; image kinds get a camera (DEFAULT_CAMERA unless given)
    and, for smolvla-tiny, the tiny SmolVLM folder under `out` (written by the demo at start)."""
    if policy_kind not in POLICY_KINDS:
        raise ValueError(f"unknown policy {policy_kind!r} (one of {', '.join(POLICY_KINDS)})")
    size = "quick" if quick else "full"
    image = policy_kind in IMAGE_KINDS
    episodes = IMAGE_EPISODES[size] if image else (QUICK_EPISODES if quick else {})
    vlm = (out / VLM_DIR).resolve() if policy_kind == "smolvla-tiny" else None
    return DemoConfig(**episodes, value=value_preset(size, policy_kind), policy=policy_preset(policy_kind, size, vlm_dir=vlm),
                      policy_kind=policy_kind, camera=list(camera or DEFAULT_CAMERA) if image or camera else None)
