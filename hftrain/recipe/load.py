"""Loading a recipe: one shallow ``base:`` include, then ``key=value`` overrides (and ``@FILE.yaml``
profiles) last, typed by the schema; every problem collected and reported at once
(:class:`~hftrain.recipe.schema.RecipeError`). Saving and printing the resolved recipe."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from hftrain.recipe.checks import check_values, missing_paths
from hftrain.recipe.schema import Recipe, RecipeError


RUN_ONLY = ("log.trackers=[]", "hub.push=false", "hub.push_best=false")
"""Overrides for tools that read a finished run's ``recipe.yaml`` (eval, predict, export): the trackers
and the Hub upload belong to training, so a machine without the run's tracker packages can still use it."""


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = (), check_paths: bool = True) -> Recipe:
    """Read ``path`` (with its ``base:``), apply ``key=value`` overrides, type-check everything."""
    path = Path(path)
    raw = _read_with_base(path)
    problems: list[str] = []
    for item in expand_override_files(overrides, problems):
        key, sep, text = item.partition("=")
        if not sep or not key:
            problems.append(f"override {item!r} is not of the form key=value")
            continue
        _set_dotted(raw, key.strip(), yaml.safe_load(text) if text.strip() else None)
    recipe = _build(Recipe, raw, "", problems)
    if recipe.phases and not problems:  # the phases define the run's length
        recipe.train.epochs = sum(phase.epochs for phase in recipe.phases)
    if not problems:
        check_values(recipe, problems)
        if check_paths:
            problems.extend(missing_paths(recipe))
    if problems:
        raise RecipeError(problems, str(path))
    return recipe


def expand_override_files(overrides, problems: list[str]) -> list[str]:
    """``@FILE.yaml`` in the overrides stands for the ``key: value`` lines of that file (dotted keys,
    e.g. a stability profile), in its place among the other overrides."""
    out: list[str] = []
    for item in overrides:
        if not item.startswith("@"):
            out.append(item)
            continue
        path = Path(item[1:])
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            problems.append(f"override file {path}: {err}")
            continue
        if not isinstance(values, dict):
            problems.append(f"override file {path}: expected a mapping of dotted keys to values")
            continue
        out.extend(f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
                   for key, value in values.items())
    return out


def _read_with_base(path: Path) -> dict:
    if not path.is_file():
        raise RecipeError([f"recipe file {path} not found"], str(path))
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise RecipeError([f"not valid YAML: {err}"], str(path)) from None
    if not isinstance(raw, dict):
        raise RecipeError(["the top level must be a mapping of sections"], str(path))
    base = raw.pop("base", None)
    if base is None:
        return raw
    base_path = (path.parent / base).resolve()
    if not base_path.is_file():
        raise RecipeError([f"base: {base_path} not found"], str(path))
    base_raw = yaml.safe_load(base_path.read_text()) or {}
    if "base" in base_raw:
        raise RecipeError([f"base: {base_path} has a base of its own; one level of inclusion only"], str(path))
    return _merge(base_raw, raw)


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in _FREEFORM:
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


_FREEFORM = {"config", "category_map"}
"""dict-typed fields whose keys are free (not schema keys)."""


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    """``a.b.c=value``; a number indexes an existing list (``phases.1.batch_size=8``)."""
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
            continue
        if not isinstance(node.get(part), (dict, list)):
            node[part] = {}
        node = node[part]
    if isinstance(node, list) and parts[-1].isdigit() and int(parts[-1]) < len(node):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value


def all_keys(cls: type = Recipe, prefix: str = "") -> list[str]:
    """Every valid dotted key of the schema."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        full = prefix + f.name
        keys.append(full)
        inner = _dataclass_in(hints[f.name])
        if inner is not None:
            keys.extend(all_keys(inner, full + "."))
    return keys


def _dataclass_in(hint) -> type | None:
    if dataclasses.is_dataclass(hint):
        return hint
    for arg in typing.get_args(hint):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _build(cls: type, raw: Any, prefix: str, problems: list[str]):
    if not isinstance(raw, dict):
        problems.append(f"{prefix.rstrip('.') or 'recipe'}: expected a mapping, got {raw!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    valid = all_keys()
    for key in raw:
        if key not in names:
            full = prefix + str(key)
            near = difflib.get_close_matches(full, valid, n=1, cutoff=0.6)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            problems.append(f"unknown key {full!r}{hint}")
    values = {}
    for name in names & set(raw):
        values[name] = _coerce(raw[name], hints[name], prefix + name, problems)
    return cls(**values)


def _coerce(value: Any, hint: Any, key: str, problems: list[str]) -> Any:
    """Check ``value`` against the type ``hint``; record a problem naming ``key`` if it fails."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        candidates = [a for a in args if a is not type(None)]
        if len(candidates) == 1:
            return _coerce(value, candidates[0], key, problems)
        for candidate in candidates:
            trial: list[str] = []
            result = _coerce(value, candidate, key, trial)
            if not trial:
                return result
        problems.append(f"{key}: expected {_type_name(hint)}, got {value!r}")
        return None
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".", problems)
    if origin is Literal:
        if value not in args:
            problems.append(f"{key}: expected one of {list(args)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{key}: expected a list of {_type_name(args[0])}, got {value!r}")
            return []
        return [_coerce(v, args[0], f"{key}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{key}: expected a mapping, got {value!r}")
            return {}
        if args and args[1] is not Any:
            return {k: _coerce(v, args[1], f"{key}.{k}", problems) for k, v in value.items()}
        return dict(value)
    if hint is Any:
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads 5e-5 as a string; accept it as a float
            return float(value)
        except ValueError:
            pass
    if hint in (int, str, bool) and isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    problems.append(f"{key}: expected {_type_name(hint)}, got {value!r} ({type(value).__name__})")
    return value


def _type_name(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # int | Literal["auto"] -> int or 'auto'
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is Literal:
        return " or ".join(repr(a) for a in typing.get_args(hint))
    return str(hint).replace("typing.", "")


def to_dict(recipe: Recipe) -> dict:
    return dataclasses.asdict(recipe)


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    """Write the fully resolved recipe: repeating a run needs this file alone."""
    Path(path).write_text(yaml.safe_dump(to_dict(recipe), sort_keys=False))
