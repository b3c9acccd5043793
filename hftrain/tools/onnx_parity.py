"""How far an exported ONNX model's outputs are from PyTorch's on the same inputs.

Query order is not a stable thing to compare element by element: the DETR families pick their
queries with a top-k over encoder scores, and detections are sorted by score, so two near-equal
scores may come out swapped between runtimes without any real difference. Each PyTorch row
(query or detection) is therefore paired with the closest ONNX row (same label for detections)
and the differences are those of the pairs. Outputs whose order is fixed (RetinaNet's anchors)
are compared element by element.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

_CHUNK = 256  # reference rows per pairing step: a (256, N) distance matrix at a time


def _closest(reference: np.ndarray, candidates: np.ndarray, same_group: np.ndarray | None = None) -> np.ndarray:
    """For each reference row, the index of the candidate row with the smallest max-abs difference
    (only among rows where ``same_group[i, j]``, when given)."""
    best = np.empty(len(reference), dtype=np.int64)
    for start in range(0, len(reference), _CHUNK):
        rows = reference[start:start + _CHUNK]
        distance = np.abs(rows[:, None, :] - candidates[None, :, :]).max(-1)
        if same_group is not None:
            distance = np.where(same_group[start:start + _CHUNK], distance, np.inf)
        best[start:start + _CHUNK] = distance.argmin(1)
    return best


@dataclass
class Parity:
    """Max absolute differences, ONNX Runtime against PyTorch, over all images."""

    logits: float = 0.0
    pred_boxes: float = 0.0
    """Normalised (cx, cy, w, h)."""
    scores: float = 0.0
    boxes_px: float = 0.0
    """Detections' xyxy boxes, in pixels of the input."""
    detections: int = 0
    """Detections compared."""
    problems: list[str] = field(default_factory=list)
    """What made the comparison fail beyond a number (a count or a label that differs)."""

    def add_raw(self, logits: np.ndarray, onnx_logits: np.ndarray, boxes: np.ndarray, onnx_boxes: np.ndarray,
                paired: bool) -> None:
        """One image's (N, C) logits and (N, 4) boxes; ``paired``: rows may come in another order."""
        if logits.shape != onnx_logits.shape or boxes.shape != onnx_boxes.shape:
            self.problems.append(f"raw output shapes differ: logits {logits.shape} vs {onnx_logits.shape}")
            return
        if paired:
            index = _closest(np.concatenate([logits, boxes], 1), np.concatenate([onnx_logits, onnx_boxes], 1))
            onnx_logits, onnx_boxes = onnx_logits[index], onnx_boxes[index]
        self.logits = max(self.logits, float(np.abs(logits - onnx_logits).max(initial=0.0)))
        self.pred_boxes = max(self.pred_boxes, float(np.abs(boxes - onnx_boxes).max(initial=0.0)))

    def add_detections(self, reference: dict, onnx: dict, box_scale: float) -> None:
        """One image's detections (``scores``, ``labels``, ``boxes`` as numpy arrays); boxes are
        divided by ``box_scale`` (the input's longer side) for pairing only."""
        n, m = len(reference["scores"]), len(onnx["scores"])
        if n != m:
            self.problems.append(f"{n} detections in PyTorch, {m} in ONNX Runtime")
            return
        self.detections += n
        if n == 0:
            return
        rows = np.concatenate([reference["scores"][:, None], reference["boxes"] / box_scale], 1)
        onnx_rows = np.concatenate([onnx["scores"][:, None], onnx["boxes"] / box_scale], 1)
        same_label = reference["labels"][:, None] == onnx["labels"][None, :]
        unmatched = ~same_label.any(1)
        if unmatched.any():
            self.problems.append(f"{int(unmatched.sum())} PyTorch detections have a label no ONNX detection has")
            return
        index = _closest(rows, onnx_rows, same_label)
        self.scores = max(self.scores, float(np.abs(reference["scores"] - onnx["scores"][index]).max()))
        self.boxes_px = max(self.boxes_px, float(np.abs(reference["boxes"] - onnx["boxes"][index]).max()))

    def failures(self, atol: float, box_scale: float) -> list[str]:
        """Why the parity fails at tolerance ``atol`` (scores, normalised boxes, pixel boxes divided
        by ``box_scale``); empty when it passes."""
        out = list(self.problems)
        if self.scores > atol:
            out.append(f"scores differ by {self.scores:.3g} > {atol:g}")
        if self.pred_boxes > atol:
            out.append(f"pred_boxes differ by {self.pred_boxes:.3g} > {atol:g}")
        if self.boxes_px > atol * box_scale:
            out.append(f"boxes differ by {self.boxes_px:.3g} px > {atol:g} x {box_scale:g} px")
        return out

    def figures(self) -> dict:
        return {"max_abs_diff_logits": self.logits, "max_abs_diff_pred_boxes": self.pred_boxes,
                "max_abs_diff_scores": self.scores, "max_abs_diff_boxes_px": self.boxes_px,
                "detections_compared": self.detections}
