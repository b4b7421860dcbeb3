"""A training run's recipe, checked at the door (torch-free: the API and the CLI import it).

    {"policy": {"type": ..., ...}, "value": {...}, "recap": {...}, "task_max_len": {...}, "cameras": [...]}

Each section overrides one typed config, the single home of its defaults: `policy` the type's
(training/policies/registry.py), `value` ValueConfig (training/value/configuration_value.py),
`recap` RecapConfig (training/recap_config.py). A section's model is built from its dataclass:
unknown keys refused, floats finite, bounds from each field's metadata, fields the data or the run
decide (a config's DERIVED) not settable. A refusal is a RecipeError naming the field
("recap.advantage_horizon: ..."); the API answers it with a 422, the CLI with one line.
Invariant: a recipe `check_recipe` accepts builds every config in the worker without error."""

from __future__ import annotations

import typing
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from training.policies.registry import RecipeError, config_fields, defaults as policy_defaults, validate_policy_recipe
from training.recap_config import RecapConfig
from training.value.configuration_value import ValueConfig

SECTIONS: dict[str, type] = {"value": ValueConfig, "recap": RecapConfig}
TOP_LEVEL = ("policy", "value", "recap", "task_max_len", "cameras")
MAX_TASK_LEN = 10**9

__all__ = ["RecipeError", "check_recipe", "check_section", "check_selection", "effective_recipe", "section_model"]


@typing.no_type_check
def _section_model(name: str) -> type[BaseModel]:
    return create_model(f"Recipe_{name}", __config__=ConfigDict(extra="forbid"), **config_fields(SECTIONS[name]))


_MODELS: dict[str, type[BaseModel]] = {}


def section_model(name: str) -> type[BaseModel]:
    """The Pydantic model of a recipe section ("value" or "recap")."""
    if name not in _MODELS:
        _MODELS[name] = _section_model(name)
    return _MODELS[name]


def _first_error(section: str, e: ValidationError) -> RecipeError:
    err = e.errors()[0]
    where = ".".join([section, *(str(x) for x in err["loc"][:1])])  # the field, not the union member tried
    msg = "not a field of this section" if err["type"] == "extra_forbidden" else err["msg"]
    return RecipeError(f"{where}: {msg}")


def check_section(name: str, overrides: Any) -> dict[str, Any]:
    """A `value` or `recap` section checked against its config: the explicit overrides (coerced),
    so that the defaults stay the config's; RecipeError naming the field otherwise."""
    if not isinstance(overrides, Mapping):
        raise RecipeError(f"{name}: must be an object of {SECTIONS[name].__name__} fields")
    derived = next((k for k in overrides if k in SECTIONS[name].DERIVED), None)
    if derived is not None:
        raise RecipeError(f"{name}.{derived}: set from the data or the run, not by a recipe")
    try:
        checked = section_model(name).model_validate(dict(overrides))
    except ValidationError as e:
        raise _first_error(name, e) from None
    return checked.model_dump(include=set(overrides))


def _check_task_max_len(limits: Any) -> dict[str, int]:
    if not isinstance(limits, Mapping):
        raise RecipeError("task_max_len: must be an object: task -> episode time limit (ticks)")
    for task, n in limits.items():
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_TASK_LEN:
            raise RecipeError(f"task_max_len.{task}: must be a whole number of ticks in 1..{MAX_TASK_LEN}")
    return dict(limits)


def check_selection(policy: Mapping[str, Any] | None, recap: Mapping[str, Any] | None) -> None:
    """Value-guided chunk selection (recap.select_chunks > 1) samples chunks from noise seeds and scores
    them with a critic of the native backbone: the native_flow policy type only."""
    k = (recap or {}).get("select_chunks", 0)
    ptype = (policy or {}).get("type", "native_flow")
    if isinstance(k, int) and k > 1 and ptype != "native_flow":
        raise RecipeError(f"recap.select_chunks: value-guided chunk selection is available for the native_flow "
                          f"policy type, not {ptype} (set it to 0)")


def check_recipe(recipe: Any) -> dict[str, Any]:
    """The whole recipe checked (the CLI's check before a request; the API checks the same sections
    through its schema): each section's explicit overrides; RecipeError naming the field otherwise."""
    if not isinstance(recipe, Mapping):
        raise RecipeError("recipe: must be a JSON object")
    unknown = next((k for k in recipe if k not in TOP_LEVEL), None)
    if unknown is not None:
        raise RecipeError(f"{unknown}: not a recipe section (one of {', '.join(TOP_LEVEL)})")
    out: dict[str, Any] = dict(recipe)
    if "policy" in recipe:
        if not isinstance(recipe["policy"], Mapping):
            raise RecipeError("policy: must be an object with the policy type and its config's fields")
        try:
            out["policy"] = validate_policy_recipe(recipe["policy"])
        except RecipeError as e:
            raise RecipeError(f"policy.{e}") from None
    for name in SECTIONS:
        if name in recipe:
            out[name] = check_section(name, recipe[name])
    check_selection(out.get("policy"), out.get("recap"))
    if "task_max_len" in recipe:
        out["task_max_len"] = _check_task_max_len(recipe["task_max_len"])
    if "cameras" in recipe and not (isinstance(recipe["cameras"], list)
                                    and all(isinstance(c, str) for c in recipe["cameras"])):
        raise RecipeError("cameras: must be a list of camera names")
    return out


def effective_recipe(policy: Mapping[str, Any], value: Mapping[str, Any], recap: Mapping[str, Any]) -> dict:
    """Every settable field of the recipe's sections with the value a run uses: the overrides over
    each config's defaults (printed at the start of a run)."""
    over = validate_policy_recipe(policy)
    return {"policy": policy_defaults(over["type"]) | over,
            "value": section_model("value")().model_dump() | dict(value),
            "recap": section_model("recap")().model_dump() | dict(recap)}
