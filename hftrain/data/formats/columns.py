"""Build a dataset in the project's schema (the Hub detection schema) column by column, without
per-object Python dicts.

Readers append one image at a time (``add_image``) and its objects one at a time
(``add_object``); the boxes go into flat typed arrays, and ``build`` turns them into Arrow
arrays (the ``objects`` struct of lists, every list sharing one offsets array). This keeps a 70,000-frame,
1.3-million-box BDD100K conversion within seconds and a few hundred MB, where a list of
per-object dicts handed to ``Dataset.from_dict`` costs several times more of both.
"""

from __future__ import annotations

from array import array

import datasets
import numpy as np
import pyarrow as pa

from hftrain.data.formats.report import ConversionReport
from hftrain.data.schema import detection_features


class DetectionColumns:
    """Accumulates rows of the schema; ``extra`` maps extra column names to their features."""

    def __init__(self, class_names: list[str], extra: dict[str, datasets.Value] | None = None):
        self.class_names = list(class_names)
        self.extra = dict(extra or {})
        self.paths: list[str | None] = []
        self.blobs: list[bytes | None] = []
        self.image_ids = array("q")
        self.widths = array("i")
        self.heights = array("i")
        self.extra_values: dict[str, list] = {name: [] for name in self.extra}
        self.offsets = array("q", [0])
        self.object_ids = array("q")
        self.boxes = array("f")
        self.categories = array("q")
        self.areas = array("f")
        self.crowd = array("b")
        self.difficult = array("b")

    def __len__(self) -> int:
        return len(self.image_ids)

    def add_object(
        self, object_id: int, box: list[float], category: int, area: float | None = None,
        iscrowd: int = 0, difficult: int = 0,
    ) -> None:
        """Append one object to the image being built (the next ``add_image`` closes it)."""
        self.object_ids.append(object_id)
        self.boxes.extend(box)
        self.categories.append(category)
        self.areas.append(box[2] * box[3] if area is None else area)
        self.crowd.append(iscrowd)
        self.difficult.append(difficult)

    def add_object_counted(
        self, report: ConversionReport, object_id: int, box: list[float], category: int,
        area: float | None = None, iscrowd: int = 0, difficult: int = 0,
    ) -> None:
        """``add_object`` plus the report's box counts."""
        self.add_object(object_id, box, category, area, iscrowd, difficult)
        report.boxes += 1
        report.boxes_per_class[self.class_names[category]] += 1

    def objects_added(self) -> int:
        """How many objects all images hold so far (a running id for sources without one)."""
        return len(self.object_ids)

    def pending_objects(self) -> int:
        """How many objects were added since the last ``add_image``."""
        return len(self.object_ids) - self.offsets[-1]

    def add_image(
        self, path: str | None, image_id: int, width: int, height: int,
        image_bytes: bytes | None = None, **extra,
    ) -> None:
        """Close the current image: the objects added since the previous call belong to it."""
        self.paths.append(path)
        self.blobs.append(image_bytes)
        self.image_ids.append(image_id)
        self.widths.append(width)
        self.heights.append(height)
        for name in self.extra:
            self.extra_values[name].append(extra.get(name))
        unknown = set(extra) - set(self.extra)
        if unknown:
            raise KeyError(f"extra columns {sorted(unknown)} were not declared (declared: {sorted(self.extra)})")
        self.offsets.append(len(self.object_ids))

    def build(self, image_storage: pa.StructArray | None = None) -> datasets.Dataset:
        """The dataset in the Hub detection schema (``objects`` a dict of lists sharing one offsets
        array, class names in the ClassLabel, ``image`` an ``Image`` feature read undecoded).
        ``image_storage``: the ``image`` column as an Arrow ``{bytes, path}`` struct, one per image
        (for sources already holding it; the paths and bytes given to ``add_image`` are then unused)."""
        if self.pending_objects():
            raise RuntimeError("objects were added after the last add_image")
        if image_storage is not None and len(image_storage) != len(self):
            raise ValueError(f"image_storage has {len(image_storage)} rows for {len(self)} images")
        features = detection_features(self.class_names, self.extra)
        schema = features.arrow_schema
        count = len(self.object_ids)
        offsets = pa.array(np.frombuffer(self.offsets, dtype=np.int64).astype(np.int32))

        def values(buffer, dtype, pa_type):
            return pa.array(np.frombuffer(buffer, dtype=dtype) if count else np.zeros(0, dtype), pa_type)

        boxes = pa.FixedSizeListArray.from_arrays(values(self.boxes, np.float32, pa.float32()), 4)
        children = {
            "id": values(self.object_ids, np.int64, pa.int64()),
            "area": values(self.areas, np.float32, pa.float32()),
            "bbox": boxes,
            "category": values(self.categories, np.int64, pa.int64()),
            "iscrowd": values(self.crowd, np.int8, pa.int8()),
            "difficult": values(self.difficult, np.int8, pa.int8()),
        }
        objects_type = schema.field("objects").type
        objects = pa.StructArray.from_arrays(
            [pa.ListArray.from_arrays(offsets, children[field.name], type=field.type) for field in objects_type],
            fields=list(objects_type),
        )
        image = image_storage if image_storage is not None else pa.StructArray.from_arrays(
            [pa.array(self.blobs, pa.binary()), pa.array(self.paths, pa.string())],
            fields=list(schema.field("image").type),
        )
        arrays = {
            "image": image,
            "image_id": pa.array(np.frombuffer(self.image_ids, dtype=np.int64) if len(self) else [], pa.int64()),
            "width": pa.array(np.frombuffer(self.widths, dtype=np.int32) if len(self) else [], pa.int32()),
            "height": pa.array(np.frombuffer(self.heights, dtype=np.int32) if len(self) else [], pa.int32()),
            "objects": objects,
        }
        for name in self.extra:
            arrays[name] = pa.array(self.extra_values[name], schema.field(name).type)
        table = pa.Table.from_arrays([arrays[name] for name in schema.names], schema=schema)
        return datasets.Dataset(datasets.table.InMemoryTable(table), info=datasets.DatasetInfo(features=features))
