"""Recipes: typed dataclasses are the schema, YAML only supplies values.

A recipe file may name one ``base:`` file (relative to itself) whose values it overrides;
command-line ``key=value`` overrides come last. Every problem (unknown key, wrong type,
missing path) is collected and reported at once, before any model or dataset is built.

- :mod:`hftrain.recipe.schema`: the dataclasses (every field typed, defaulted and documented);
- :mod:`hftrain.recipe.load`: base, overrides, profiles, building, saving;
- :mod:`hftrain.recipe.checks`: value checks across sections;
- :mod:`hftrain.recipe.presets`: the augmentation presets and ``resolve_augment``.
"""

from hftrain.recipe.checks import missing_paths
from hftrain.recipe.load import RUN_ONLY, _build, all_keys, expand_override_files, load_recipe, save_recipe, to_dict
from hftrain.recipe.presets import resolve_augment
from hftrain.recipe.schema import *  # noqa: F401,F403  (the section dataclasses, Recipe, RecipeError)
