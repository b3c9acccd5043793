"""Counts of what a conversion kept, dropped and changed, by reason: nothing is dropped silently."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ConversionReport:
    """What a reader saw. Every dropped or changed box or image is counted under a reason."""

    source: str
    images: int = 0
    boxes: int = 0
    boxes_per_class: Counter = field(default_factory=Counter)
    dropped_boxes: Counter = field(default_factory=Counter)
    changed_boxes: Counter = field(default_factory=Counter)
    dropped_images: Counter = field(default_factory=Counter)
    kept_images: Counter = field(default_factory=Counter)
    """Images kept as they are but worth knowing about, by reason (a YOLO image whose label file
    is missing or empty: an image without objects)."""
    examples: dict[str, list[str]] = field(default_factory=dict)
    """Up to a few example entries per reason, so a user can find them."""
    notes: list[str] = field(default_factory=list)
    """Other facts a user should see, one line each (where the class names came from, images
    found by a fallback rule and how many)."""
    category_ids: dict[str, list[int]] = field(default_factory=dict)
    """The source's own category ids of each class name (several when ``category_map`` merges
    categories; empty when the source has no ids of its own): predictions are written back in them."""

    def drop_box(self, reason: str, where: str) -> None:
        self.dropped_boxes[reason] += 1
        self._example(reason, where)

    def change_box(self, reason: str, where: str) -> None:
        self.changed_boxes[reason] += 1
        self._example(reason, where)

    def drop_image(self, reason: str, where: str) -> None:
        self.dropped_images[reason] += 1
        self._example(reason, where)

    def keep_image(self, reason: str, where: str) -> None:
        self.kept_images[reason] += 1
        self._example(reason, where)

    def _example(self, reason: str, where: str, limit: int = 5) -> None:
        shown = self.examples.setdefault(reason, [])
        if len(shown) < limit:
            shown.append(where)

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "images": self.images,
            "boxes": self.boxes,
            "boxes_per_class": dict(self.boxes_per_class),
            "dropped_boxes": dict(self.dropped_boxes),
            "changed_boxes": dict(self.changed_boxes),
            "dropped_images": dict(self.dropped_images),
            "kept_images": dict(self.kept_images),
            "examples": self.examples,
            "notes": self.notes,
            "category_ids": self.category_ids,
        }

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    def lines(self) -> list[str]:
        """Human-readable summary, one fact per line."""
        out = [f"{self.source}: {self.images} images, {self.boxes} boxes"]
        if self.boxes_per_class:
            out.append("  boxes per class: " + ", ".join(f"{k} {v}" for k, v in sorted(self.boxes_per_class.items())))
        out.extend(f"  {note}" for note in self.notes)
        for title, counter in (
            ("dropped images", self.dropped_images),
            ("dropped boxes", self.dropped_boxes),
            ("changed boxes", self.changed_boxes),
            ("kept images", self.kept_images),
        ):
            for reason, count in sorted(counter.items()):
                example = self.examples.get(reason, [""])[0]
                out.append(f"  {title}: {count} {reason}" + (f" (e.g. {example})" if example else ""))
        return out
