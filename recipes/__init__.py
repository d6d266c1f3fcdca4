"""The recipes shipped with unstar-trl (TRL-style YAMLs, `world_<method>.yaml` for the embedded world, `tofu_*.yaml`
for real models on GPUs, `accelerate/*.yaml` launch configs), and how to read them.

In a wheel they are package data of `unstar_trl.recipes`; `--config NAME` finds one by name when NAME is not a file.
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path

import yaml

from unstar_trl.io import UsageError


def recipes_dir() -> Path:
    """The folder of the shipped recipes (a source checkout, an editable install or a wheel)."""
    return Path(str(resources.files(__name__)))


def find_recipe(name: str | Path) -> Path:
    """`name` when it is a file, else the shipped recipe of that name (with or without `.yaml`)."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = recipes_dir() / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    available = ", ".join(sorted(p.stem for p in recipes_dir().glob("*.yaml")))
    raise UsageError(f"recipe {name} not found (not a file, nor a shipped recipe: {available})")


def read_recipe(path: str | Path) -> dict:
    """A recipe YAML (a file or a shipped recipe's name) as a dict of field: value (an empty file is {})."""
    path = find_recipe(path)
    try:
        recipe = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark, problem = getattr(error, "problem_mark", None), getattr(error, "problem", None) or str(error)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise UsageError(f"recipe {path}{where}: not valid YAML ({' '.join(problem.split())})") from None
    if not isinstance(recipe, dict):
        raise UsageError(f"recipe {path} must be a YAML mapping of field: value")
    return recipe


def method_recipe(method: str, targeted: bool = False) -> dict:
    """The shipped `world_<method>_targeted.yaml` (when `targeted` and it exists), else `world_<method>.yaml`, else
    {}."""
    names = [f"world_{method}_targeted.yaml"] if targeted else []
    for name in [*names, f"world_{method}.yaml"]:
        if (recipes_dir() / name).is_file():
            return read_recipe(recipes_dir() / name)
    return {}


def config_from_recipe(config_class, recipe: dict, **overrides):
    """`config_class` built from the recipe keys that are its fields (others, e.g. `method`, belong to the CLI),
    with `overrides` on top."""
    names = {item.name for item in dataclasses.fields(config_class)}
    return config_class(**{**{key: value for key, value in recipe.items() if key in names}, **overrides})
