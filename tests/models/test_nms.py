"""NMS against a brute-force pure-Python reference."""

from __future__ import annotations

import random

import pytest
import torch

from hftrain.models.nms import batched_nms, box_iou, nms


def _iou_reference(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _nms_reference(boxes: list[list[float]], scores: list[float], groups: list[int], thr: float) -> list[int]:
    """Greedy NMS per group; ties in score visit the lower index first."""
    order = sorted(range(len(boxes)), key=lambda i: (-scores[i], i))
    kept: list[int] = []
    for i in order:
        if all(groups[k] != groups[i] or _iou_reference(boxes[k], boxes[i]) <= thr for k in kept):
            kept.append(i)
    return kept


def _random_case(seed: int, n: int, num_groups: int, tied_scores: bool):
    rng = random.Random(seed)
    boxes = []
    for _ in range(n):
        # clustered boxes so that many pairs overlap around the threshold
        cx, cy = rng.choice([(20, 20), (50, 40), (30, 60)])
        x1 = cx + rng.uniform(-8, 8)
        y1 = cy + rng.uniform(-8, 8)
        boxes.append([x1, y1, x1 + rng.uniform(5, 25), y1 + rng.uniform(5, 25)])
    # few distinct values when tied, so the tie rule decides the outcome
    scores = [rng.choice([0.2, 0.5, 0.9]) if tied_scores else rng.random() for _ in range(n)]
    groups = [rng.randrange(num_groups) for _ in range(n)]
    return boxes, scores, groups


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("tied_scores", [False, True])
def test_batched_nms_matches_reference(seed: int, tied_scores: bool) -> None:
    boxes, scores, groups = _random_case(seed, n=80, num_groups=3, tied_scores=tied_scores)
    expected = _nms_reference(boxes, scores, groups, thr=0.5)
    kept = batched_nms(torch.tensor(boxes), torch.tensor(scores), torch.tensor(groups), 0.5)
    assert kept.tolist() == expected
    # and the suppression really happened: clustered boxes must lose some members
    assert len(expected) < len(boxes)


@pytest.mark.parametrize("seed", range(4))
def test_single_class_nms_matches_reference(seed: int) -> None:
    boxes, scores, _ = _random_case(100 + seed, n=60, num_groups=1, tied_scores=False)
    expected = _nms_reference(boxes, scores, [0] * len(boxes), thr=0.3)
    assert nms(torch.tensor(boxes), torch.tensor(scores), 0.3).tolist() == expected


def test_group_loop_path_matches_offset_path(monkeypatch: pytest.MonkeyPatch) -> None:
    boxes, scores, groups = _random_case(7, n=120, num_groups=4, tied_scores=False)
    args = (torch.tensor(boxes), torch.tensor(scores), torch.tensor(groups), 0.5)
    offset_result = batched_nms(*args).tolist()
    monkeypatch.setattr("hftrain.models.nms._COORDINATE_TRICK_MAX_BOXES", 10)
    assert batched_nms(*args).tolist() == offset_result == _nms_reference(boxes, scores, groups, 0.5)


def test_threshold_is_strict_and_empty_input() -> None:
    # IoU of these two boxes is exactly 0.5: kept at threshold 0.5, suppressed below it
    boxes = torch.tensor([[0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    assert box_iou(boxes, boxes)[0, 1].item() == 0.5
    scores = torch.tensor([0.9, 0.8])
    assert nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert nms(boxes, scores, 0.49).tolist() == [0]
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0
