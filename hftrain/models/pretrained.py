"""Pretrained DETR-family checkpoints: checked before any data is read, loaded as published.

:func:`check_pretrained` runs at the start of ``hftrain train`` and ``hftrain doctor``, before the
data is read or scanned: it resolves the checkpoint's config and weights file (a hub id is
downloaded into the Hugging Face cache, a local directory is looked into), maps a timm ResNet
backbone to transformers' own (:mod:`hftrain.models.timm_resnet`) and builds the architecture on
the meta device (no memory), so that a checkpoint that cannot load fails in seconds, naming the id
or path and what to do. :func:`load_pretrained` then loads it with the recipe's labels and says
which heads were re-initialised; their class bias gets the family's prior
(:mod:`hftrain.models.head_prior`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForObjectDetection, PreTrainedConfig, PreTrainedModel

from hftrain.models import timm_resnet
from hftrain.models.head_prior import apply_prior

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")

OFFLINE_ADVICE = ("Without network access, download the weights elsewhere (save_pretrained, or huggingface-cli download "
                  "into the Hugging Face cache) and pass the local directory as model.pretrained.")


class PretrainedError(Exception):
    """A pretrained checkpoint that cannot be loaded; the message names it and what to do."""


class PretrainedNotFound(PretrainedError, OSError):
    """Pretrained weights could not be found (no network, wrong id, missing directory or files)."""


@dataclass
class Checkpoint:
    """A pretrained checkpoint as :func:`check_pretrained` found it."""

    name: str
    where: str
    """``hub id`` or ``local directory``."""
    config: PreTrainedConfig
    key_mapping: dict[str, str] | None = None
    """Renaming of the checkpoint's timm backbone keys (None: loaded as saved)."""
    backbone: str = ""
    """The backbone as loaded, e.g. ``timm resnet50 (out_indices [2, 3, 4]) mapped to transformers ResNet``."""

    def describe(self) -> str:
        return (f"{self.name} ({self.where}; {self.config.model_type}, {self.config.num_labels} classes; "
                f"backbone {self.backbone})")


@dataclass
class Loaded:
    """How a model came to be: the header's ``model weights`` line and the notes printed once."""

    summary: str
    notes: list[str] = field(default_factory=list)


def where(name: str) -> str:
    return "local directory" if Path(name).exists() else "hub id"


def _not_found(name: str, err: Exception) -> PretrainedNotFound:
    return PretrainedNotFound(
        f"model.pretrained: could not load {where(name)} {name!r} ({err.__class__.__name__}: {str(err)[:300]}). "
        + OFFLINE_ADVICE)


def _weights_file(name: str) -> str:
    """The checkpoint's weights file (downloaded into the cache for a hub id)."""
    if Path(name).is_dir():
        found = [f for f in WEIGHT_FILES if (Path(name) / f).is_file()]
        if not found:
            raise PretrainedNotFound(f"model.pretrained: local directory {name!r} has no weights file (one of "
                                     f"{', '.join(WEIGHT_FILES)}); save the model there with save_pretrained")
        return str(Path(name) / found[0])
    from transformers.utils import cached_file

    for filename in WEIGHT_FILES:
        try:
            path = cached_file(name, filename, _raise_exceptions_for_missing_entries=False)
        except OSError as err:
            raise _not_found(name, err) from None
        if path:
            return path
    raise PretrainedNotFound(f"model.pretrained: hub id {name!r} has no weights file (one of {', '.join(WEIGHT_FILES)})")


def _config(name: str, **updates: Any) -> tuple[PreTrainedConfig, dict[str, str] | None, str]:
    """The checkpoint's config with ``updates``, its timm backbone (if any) replaced by transformers'
    ResNet; the key mapping and the backbone's description."""
    try:
        config = AutoConfig.from_pretrained(name, **updates)
    except OSError as err:
        raise _not_found(name, err) from None
    except ValueError as err:  # e.g. a config.json of a model type this transformers does not know
        raise PretrainedError(f"model.pretrained: {where(name)} {name!r}: transformers cannot read its config "
                              f"({err}). Upgrade transformers or choose another checkpoint.") from None
    timm = timm_resnet.describe(config.backbone_config) if timm_resnet.is_timm_backbone(config) else None
    try:
        config, mapping = timm_resnet.converted_config(config, f"model.pretrained {name!r}")
    except timm_resnet.UnsupportedTimmBackbone as err:
        raise PretrainedError(str(err)) from None
    if mapping:
        return config, mapping, f"{timm} mapped to transformers ResNet (no timm needed)"
    if timm:
        return config, None, f"{timm}, built by timm"
    backbone = getattr(getattr(config, "backbone_config", None), "model_type", None) or "built in"
    return config, None, f"transformers {backbone}"


def check_pretrained(name: str) -> Checkpoint:
    """Everything about checkpoint ``name`` that can fail before training, without reading data:
    config, weights file, backbone and architecture (built on the meta device)."""
    config, mapping, backbone = _config(name)
    _weights_file(name)
    try:
        with torch.device("meta"):
            AutoModelForObjectDetection.from_config(config)
    except Exception as err:  # noqa: BLE001 - reported with the checkpoint's name, whatever transformers raised
        raise PretrainedError(f"model.pretrained: {where(name)} {name!r}: transformers cannot build its architecture "
                              f"({err.__class__.__name__}: {str(err).splitlines()[0][:300]})") from None
    return Checkpoint(name, where(name), config, mapping, backbone)


def module_names(keys) -> set[str]:
    """``class_embed.0`` for ``class_embed.0.bias``: the modules that parameter names belong to."""
    return {key.rpartition(".")[0] for key in keys}


def load_pretrained(name: str, labels: dict[str, Any], overrides: dict[str, Any]) -> tuple[PreTrainedModel, Loaded]:
    """``from_pretrained`` with the recipe's labels (``num_labels``, ``id2label``, ``label2id``) and
    ``model.config`` overrides; a timm ResNet backbone is loaded into transformers' ResNet, heads
    of another size are re-initialised and their class bias gets the family's prior."""
    checkpoint_labels = _config(name)[0].num_labels
    config, mapping, backbone = _config(name, **labels, **overrides)
    try:
        model, info = AutoModelForObjectDetection.from_pretrained(
            name, config=config, key_mapping=mapping, ignore_mismatched_sizes=True, output_loading_info=True)
    except OSError as err:
        raise _not_found(name, err) from None
    if mapping:  # transformers keeps the renamings it used, to save in the layout it loaded: ours must not be
        model._weight_conversions = None  # reversed (timm names under a ResNet config); None: its default layout
    initialised = module_names([key for key, *_ in info["mismatched_keys"]] + list(info["missing_keys"]))
    prior = apply_prior(model, initialised)
    heads = ", ".join(sorted(initialised)) or "none"
    summary = f"pretrained {name} ({where(name)}); backbone {backbone}; re-initialised: {heads}"
    if initialised:
        summary += f" ({checkpoint_labels} -> {config.num_labels} classes{'; ' + prior if prior else ''})"
    return model, Loaded(summary)


def from_scratch(model: PreTrainedModel) -> Loaded:
    """The ``model weights`` line of a model built from ``model.config``; class heads get their prior."""
    prior = apply_prior(model)
    return Loaded(f"from scratch (random init){'; ' + prior if prior else ''}")
