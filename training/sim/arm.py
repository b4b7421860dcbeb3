"""A Meta-World task behind a small robot interface: reset(seed) -> obs, step(action) -> obs,
success; optional small camera images. Seeds give fresh, reproducible object/goal layouts."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

CONTROL_PERIOD_S = 0.0125  # Meta-World's simulated time per step (frame_skip 5 x 2.5 ms)


def _expert_class_name(task: str) -> str:
    base = task.removesuffix("-v3")
    special = {"peg-insert-side": "PegInsertionSide"}
    name = special.get(base) or "".join(w.capitalize() for w in base.split("-"))
    return f"Sawyer{name}V3Policy"


def unknown_tasks(tasks) -> list[str]:
    """The names among `tasks` for which Meta-World has no scripted expert (so no simulated task)."""
    from metaworld import policies

    return [t for t in tasks if not hasattr(policies, _expert_class_name(t))]


def task_instruction(task: str) -> str:
    return re.sub(r"-v\d+$", "", task).replace("-", " ")


@dataclass
class StepResult:
    obs: np.ndarray
    success: bool


class MetaWorldArm:
    def __init__(self, task: str, *, max_steps: int = 200, image_size: tuple[int, int] | None = None,
                 camera: str = "corner"):
        # OSMesa renders on any CPU machine (EGL needs a GPU driver here); set MUJOCO_GL=egl on GPUs.
        os.environ.setdefault("MUJOCO_GL", "osmesa")
        os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
        import metaworld
        import metaworld.policies as experts

        key = f"{task}-goal-observable"
        envs = metaworld.env_dict.ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE
        if key not in envs:
            raise KeyError(f"unknown Meta-World task {task!r}; e.g. push-v3, pick-place-v3, peg-insert-side-v3")
        self.task = task
        self.instruction = task_instruction(task)
        self.max_steps = max_steps
        self.image_size = image_size
        self.camera = camera
        render_mode = "rgb_array" if image_size else None
        self.env = envs[key](render_mode=render_mode)
        self.env._freeze_rand_vec = False
        self.env.seeded_rand_vec = True
        self.env.max_path_length = max_steps + 1
        self.expert_policy = getattr(experts, _expert_class_name(task))()
        self.obs: np.ndarray | None = None
        self.steps = 0
        if image_size:
            self._fast_render(*image_size)

    def _fast_render(self, h: int, w: int) -> None:
        """Measured 10x faster offscreen rendering on CPU (shared/notes/metaworld.md)."""
        model = self.env.model
        model.vis.quality.shadowsize = 0
        model.vis.quality.offsamples = 0
        model.mat_reflectance[:] = 0
        model.vis.global_.offwidth = w
        model.vis.global_.offheight = h
        self.env.width, self.env.height = w, h
        import mujoco

        renderer = self.env.mujoco_renderer
        renderer.width, renderer.height = w, h
        renderer.camera_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, self.camera)
        renderer.camera_name = None

    @property
    def state_dim(self) -> int:
        return 39

    @property
    def action_dim(self) -> int:
        return 4

    def reset(self, seed: int) -> np.ndarray:
        self.env.seed(int(seed))
        obs, _ = self.env.reset(seed=int(seed))
        self.obs = np.asarray(obs, np.float32)
        self.steps = 0
        return self.obs

    def step(self, action: np.ndarray) -> StepResult:
        a = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
        obs, _r, _term, _trunc, info = self.env.step(a)
        self.obs = np.asarray(obs, np.float32)
        self.steps += 1
        return StepResult(self.obs, bool(info.get("success", 0.0) > 0.5))

    def expert(self, obs: np.ndarray | None = None) -> np.ndarray:
        return np.asarray(self.expert_policy.get_action(self.obs if obs is None else obs), np.float32)

    def images(self) -> dict[str, np.ndarray]:
        if not self.image_size:
            return {}
        frame = self.env.render()
        if self.camera.startswith("corner"):
            frame = frame[::-1]  # corner cameras render upside down
        return {"front": np.ascontiguousarray(frame, dtype=np.uint8)}

    def close(self) -> None:
        self.env.close()
