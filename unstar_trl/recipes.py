"""Recipe YAMLs (`recipes/*.yaml`): read one, find a method's, and turn it into the method's config."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from .io import UsageError

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
"""The recipes shipped beside the package (a source checkout or an editable install)."""


def read_recipe(path: str | Path) -> dict:
    """A recipe YAML as a dict of field: value (an empty file is {})."""
    if not Path(path).is_file():
        raise UsageError(f"recipe {path} not found")
    recipe = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(recipe, dict):
        raise UsageError(f"recipe {path} must be a YAML mapping of field: value")
    return recipe


def method_recipe(method: str, targeted: bool = False, recipes_dir: str | Path = RECIPES_DIR) -> dict:
    """`world_<method>_targeted.yaml` (when `targeted` and it exists), else `world_<method>.yaml`, else {}."""
    names = [f"world_{method}_targeted.yaml"] if targeted else []
    for name in [*names, f"world_{method}.yaml"]:
        if (Path(recipes_dir) / name).is_file():
            return read_recipe(Path(recipes_dir) / name)
    return {}


def config_from_recipe(config_class, recipe: dict, **overrides):
    """`config_class` built from the recipe keys that are its fields (others, e.g. `method`, belong to the CLI),
    with `overrides` on top."""
    names = {item.name for item in dataclasses.fields(config_class)}
    return config_class(**{**{key: value for key, value in recipe.items() if key in names}, **overrides})
