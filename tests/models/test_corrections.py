"""hftrain's corrections of transformers behaviour check at start-up that the behaviour is still
there, and stand aside (saying so once) where a newer transformers fixed it: the DETR-family box
count under several processes (hftrain/models/box_count.py) and DETR's backbone freezing
(hftrain/models/detr.py). Each is provoked both ways: transformers 5.24 as installed, and a
transformers "fixed" by monkeypatching."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from accelerate import PartialState
from accelerate.utils import reduce
from torch import distributed as dist
from transformers.loss.loss_for_object_detection import ImageLoss
from transformers.loss.loss_rt_detr import RTDetrLoss

from hftrain.models import box_count
from hftrain.models.detr import freeze_like_detr
from hftrain.models.registry import build_model
from hftrain.models.tiny import tiny_config

NAMES = ["rectangle", "ellipse", "triangle"]


def section(name: str) -> SimpleNamespace:
    return SimpleNamespace(name=name, pretrained=None, config=tiny_config(name), norm="default",
                           norm_scope=["backbone", "fpn", "head"])


@pytest.fixture(autouse=True)
def fresh_check():
    """The check runs once per process: each test starts (and ends) without its cached answer."""
    box_count.criteria_to_correct.cache_clear()
    yield
    box_count.criteria_to_correct.cache_clear()


def _count(targets) -> float:
    return float(sum(len(t["class_labels"]) for t in targets))


def fixed_image_loss_forward(self, outputs, targets):
    """ImageLoss.forward as the official DETR counts: torch.distributed sum / world size."""
    indices = self.matcher(outputs, targets)
    num_boxes = torch.as_tensor([_count(targets)])
    world_size = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(num_boxes)
        world_size = dist.get_world_size()
    num_boxes = torch.clamp(num_boxes / world_size, min=1).item()
    losses = {}
    for loss in self.losses:
        losses.update(self.get_loss(loss, outputs, targets, indices, num_boxes))
    return losses


def fixed_rt_detr_loss_forward(self, outputs, targets):
    """RTDetrLoss.forward counting through Accelerate, as transformers' ImageLoss means to."""
    indices = self.matcher(outputs, targets)
    num_boxes = torch.as_tensor([_count(targets)])
    if PartialState._shared_state != {}:
        num_boxes = reduce(num_boxes, reduction="sum") / PartialState().num_processes
    num_boxes = torch.clamp(num_boxes, min=1).item()
    losses = {}
    for loss in self.losses:
        losses.update(self.get_loss(loss, outputs, targets, indices, num_boxes))
    return losses


def test_transformers_524_still_miscounts_boxes_over_processes_and_both_criteria_are_corrected():
    assert box_count.transformers_box_count(ImageLoss) == 2.0  # 8 / 2 / 2: the mean over processes, halved again
    assert box_count.transformers_box_count(RTDetrLoss) == 2.0  # this process's own boxes
    assert box_count.criteria_to_correct() == ((ImageLoss, RTDetrLoss), ())
    detector = build_model(section("detr"), NAMES)
    assert detector.model.loss_function._hftrain_global_box_count
    assert not any("box count" in note for note in detector.notes)


def test_a_fixed_criterion_is_left_alone_and_the_run_says_so_once(monkeypatch):
    monkeypatch.setattr(ImageLoss, "forward", fixed_image_loss_forward)
    assert box_count.transformers_box_count(ImageLoss) == 4.0  # (2 + 6) / 2
    wrong, notes = box_count.criteria_to_correct()
    assert wrong == (RTDetrLoss,)
    assert len(notes) == 1 and "ImageLoss already normalises by the box count of all processes" in notes[0]
    assert "hftrain's correction is off for it" in notes[0]
    detector = build_model(section("deformable_detr"), NAMES)
    assert [n for n in detector.notes if "box count" in n] == list(notes)
    # the hook leaves the fixed criterion's own get_loss in place
    criterion = ImageLoss(None, num_classes=1, eos_coef=0.1, losses=["boxes"])
    box_count._use_global_count(criterion, ({"logits": torch.zeros(1)}, []))
    assert "get_loss" not in vars(criterion)
    # both fixed: the loss function is not wrapped at all
    monkeypatch.setattr(RTDetrLoss, "forward", fixed_rt_detr_loss_forward)
    box_count.criteria_to_correct.cache_clear()
    assert box_count.transformers_box_count(RTDetrLoss) == 4.0
    detector = build_model(section("rt_detr"), NAMES)
    assert not getattr(detector.model.loss_function, "_hftrain_global_box_count", False)
    assert sum("box count" in n for n in detector.notes) == 2


def test_a_criterion_that_cannot_be_checked_stays_corrected_and_says_so(monkeypatch):
    def unforeseen(self, outputs, targets, extra_argument):
        raise AssertionError("not called")

    monkeypatch.setattr(RTDetrLoss, "forward", unforeseen)
    wrong, notes = box_count.criteria_to_correct()
    assert wrong == (ImageLoss, RTDetrLoss)
    assert len(notes) == 1 and "could not check" in notes[0] and "hftrain corrects its count" in notes[0]


@pytest.mark.parametrize("name", ["detr", "deformable_detr"])
def test_backbone_freezing_is_corrected_only_where_transformers_still_gets_it_wrong(name):
    detector = build_model(section(name), NAMES)  # transformers 5.24 froze the whole ResNet: corrected, no note
    assert not any("backbone freezing" in note for note in detector.notes)
    model = detector.model
    backbone = model.model.backbone.model
    before = {n: p.requires_grad for n, p in backbone.named_parameters()}
    assert freeze_like_detr(model) is not None  # already DETR's freezing ("a newer transformers"): a note, no change
    assert {n: p.requires_grad for n, p in backbone.named_parameters()} == before
    for parameter in backbone.parameters():  # what from_pretrained hands back in 5.24: everything trains
        parameter.requires_grad_(True)
    assert freeze_like_detr(model) is None
    assert {n: p.requires_grad for n, p in backbone.named_parameters()} == before


def test_a_fixed_transformers_freezing_gives_a_note_in_the_detector(monkeypatch):
    """transformers' conv encoder patched to freeze as DETR does (``stages.N`` spelt right)."""
    from transformers.models.deformable_detr import modeling_deformable_detr as modeling

    original = modeling.DeformableDetrConvEncoder.__init__

    def fixed_init(self, config):
        original(self, config)
        for parameter_name, parameter in self.model.named_parameters():
            parameter.requires_grad_(parameter_name.startswith(("encoder.stages.1.", "encoder.stages.2.",
                                                                "encoder.stages.3.")))

    monkeypatch.setattr(modeling.DeformableDetrConvEncoder, "__init__", fixed_init)
    detector = build_model(section("deformable_detr"), NAMES)
    notes = [note for note in detector.notes if "backbone freezing" in note]
    assert len(notes) == 1 and "already trains only ResNet layer2-4" in notes[0] and "correction is off" in notes[0]


def test_rt_detr_batchnorm_reset_stands_aside_where_transformers_starts_at_one(monkeypatch):
    detector = build_model(section("rt_detr"), NAMES)  # 5.24: N(0, 0.01) gains, reset to 1 without a note
    norms = [m for m in detector.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(bool((m.weight == 1).all()) for m in norms)
    assert not any("BatchNorm init" in note for note in detector.notes)
    from transformers.models.rt_detr import modeling_rt_detr as modeling

    original = modeling.RTDetrPreTrainedModel._init_weights

    def fixed_init(self, module):
        original(self, module)
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(module.weight)

    monkeypatch.setattr(modeling.RTDetrPreTrainedModel, "_init_weights", fixed_init)
    detector = build_model(section("rt_detr"), NAMES)
    assert [n for n in detector.notes if "BatchNorm init" in n] == [
        f"BatchNorm init: transformers {__import__('transformers').__version__} already starts "
        "RTDetrForObjectDetection's BatchNorm weights at 1; hftrain's reset is off"]
