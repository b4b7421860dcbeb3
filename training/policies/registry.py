"""The policy types: name -> typed config (torch-free, so the API validates recipes at the door)
and, on demand, the model and processor behind it.

A recipe's policy section names a type and overrides that type's config:
    {"type": "native_flow", "chunk": 8, "steps": 2000}
    {"type": "lerobot:act", "chunk_size": 10, "dim_model": 256, "lora_rank": 0}
Fields the data or the run decide (dimensions, cameras, seed, indicator dropout, β) are not
settable. LeRobot types accept the adapter's fields and their LeRobot config's scalar fields.
Invariant: a recipe `validate_policy_recipe` accepts builds a config in the worker without error."""

from __future__ import annotations

import dataclasses
import typing
from typing import Annotated, Any, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from training.policies.lerobot_adapter.configuration_adapter import (BACKBONES, HISTORY_POLICIES, LeRobotAdapterConfig,
                                                                   lerobot_fields)
from training.policies.native.configuration_native import NativePolicyConfig

NATIVE = "native_flow"
POLICY_TYPES: dict[str, type] = {NATIVE: NativePolicyConfig} | {f"lerobot:{b}": LeRobotAdapterConfig for b in BACKBONES}
_SCALARS = {"int": int, "float": float, "bool": bool, "str": str, "list": list[int | float | bool | str]}
# Positive-default integers are sizes and counts (dim_model, n_heads, chunk_size, ...): at least 1,
# except these, where 0 has a meaning in LeRobot (no warm-up, drop no frames, keep every VLM layer).
_ZERO_ALLOWED = frozenset({"scheduler_warmup_steps", "drop_n_last_frames", "num_vlm_layers"})


class RecipeError(ValueError):
    """A recipe's policy section does not fit its type; the message names the field."""


def _bounded(hint: Any, metadata: Mapping[str, Any]) -> Any:
    """`hint` with the field's bounds (its metadata's ge / gt / le / lt) and, for floats,
    finiteness, also inside `float | None`."""
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    if base not in (int, float):
        return hint
    constraints = {k: metadata[k] for k in ("ge", "gt", "le", "lt") if k in metadata}
    if base is float:
        constraints["allow_inf_nan"] = False
    typed = Annotated[base, Field(**constraints)]
    return typed | None if optional else typed


def config_fields(cls: type) -> dict[str, tuple[Any, Any]]:
    """A config dataclass's settable fields (all but its DERIVED) as Pydantic field definitions."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in cls.DERIVED:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out[f.name] = (_bounded(hints[f.name], f.metadata), default)
    return out


@typing.no_type_check
def _recipe_model(type_name: str) -> type[BaseModel]:
    cls = POLICY_TYPES[type_name]
    fields = config_fields(cls)
    if cls is LeRobotAdapterConfig:
        for name, spec in lerobot_fields()[type_name.removeprefix("lerobot:")].items():
            t = _SCALARS[spec["kind"]]
            default = spec["default"]
            if spec["kind"] in ("int", "float"):
                # sizes, counts, rates and weights are not negative; a negative default is a sentinel (-1: auto)
                low = min(0, default) if isinstance(default, (int, float)) else 0
                if spec["kind"] == "int" and isinstance(default, int) and default > 0 and name not in _ZERO_ALLOWED:
                    low = 1
                t = typing.Annotated[t, Field(ge=low, allow_inf_nan=False)]
            fields[name] = (t | None if spec["nullable"] else t, default)
    return create_model(f"Recipe_{type_name.replace(':', '_')}", __config__=ConfigDict(extra="forbid", strict=False),
                        **fields)


_MODELS: dict[str, type[BaseModel]] = {}


def recipe_model(type_name: str) -> type[BaseModel]:
    if type_name not in _MODELS:
        _MODELS[type_name] = _recipe_model(type_name)
    return _MODELS[type_name]


def validate_policy_recipe(section: Mapping[str, Any]) -> dict[str, Any]:
    """The policy section with its type, checked against the type's config (RecipeError naming the
    field otherwise). Returns the explicit overrides only, so defaults stay the config's."""
    section = dict(section)
    type_name = section.pop("type", NATIVE)
    if type_name not in POLICY_TYPES:
        raise RecipeError(f"type: unknown policy type {type_name!r} (one of {', '.join(POLICY_TYPES)})")
    try:
        checked = recipe_model(type_name).model_validate(section)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "policy"
        msg = "not a field of this policy type" if err["type"] == "extra_forbidden" else err["msg"]
        raise RecipeError(f"{where}: {msg} ({type_name})") from None
    _check_history(type_name, checked.model_dump())
    return {"type": type_name} | checked.model_dump(include=set(section))


def _check_history(type_name: str, cfg: Mapping[str, Any]) -> None:
    """n_obs_steps > 1 only for a policy that reads a history; diffusion then serves the actions from
    its newest observation on, so its horizon must hold them: n_action_steps <= horizon - n_obs_steps + 1."""
    n = cfg.get("n_obs_steps", 1)
    if n > 1 and type_name.removeprefix("lerobot:") not in HISTORY_POLICIES:
        raise RecipeError(f"n_obs_steps: {type_name} reads only the current observation; a history of "
                          f"{n} is for {', '.join(f'lerobot:{p}' for p in sorted(HISTORY_POLICIES))} ({type_name})")
    if type_name == "lerobot:diffusion" and cfg["n_action_steps"] > cfg["horizon"] - n + 1:
        raise RecipeError(f"n_action_steps: {cfg['n_action_steps']} actions from the newest of {n} observation "
                          f"step(s) do not fit a horizon of {cfg['horizon']} (at most horizon - n_obs_steps + 1 = "
                          f"{cfg['horizon'] - n + 1}) ({type_name})")


def policy_config(section: Mapping[str, Any], *, state_dim: int, action_dim: int, cameras: Mapping[str, tuple[int, int]],
                  seed: int = 0, indicator_dropout: float = 0.3, cfg_beta: float = 1.0):
    """(type name, typed config) for a recipe's policy section and the data it trains on;
    `cameras`: name -> (H, W)."""
    over = validate_policy_recipe(section)
    type_name = over.pop("type")
    common = dict(state_dim=state_dim, action_dim=action_dim, seed=seed, indicator_dropout=indicator_dropout,
                  cfg_beta=cfg_beta)
    if type_name == NATIVE:
        size = next(iter(cameras.values()), (64, 64))
        return type_name, NativePolicyConfig(cameras=list(cameras), image_size=tuple(size), **common, **over)
    own = {f.name for f in dataclasses.fields(LeRobotAdapterConfig)}
    return type_name, LeRobotAdapterConfig(
        policy_type=type_name.removeprefix("lerobot:"), cameras={c: (3, h, w) for c, (h, w) in cameras.items()},
        policy_kwargs={k: v for k, v in over.items() if k not in own}, **common,
        **{k: v for k, v in over.items() if k in own})


def config_from_artifact(config: Mapping[str, Any]):
    """(type name, typed config) from an artifact's config.json."""
    type_name = config.get("type", NATIVE)
    if type_name not in POLICY_TYPES:
        raise KeyError(type_name)
    body = {k: v for k, v in config.items() if k != "type"}
    return type_name, POLICY_TYPES[type_name].from_dict(body)


def defaults(type_name: str) -> dict[str, Any]:
    """The settable fields of a type with their defaults (printed at the start of a run)."""
    return recipe_model(type_name)().model_dump()


def type_of(cfg) -> str:
    """The registered type name of a typed config."""
    if isinstance(cfg, NativePolicyConfig):
        return NATIVE
    return f"lerobot:{cfg.policy_type}"
