"""A dataset row's objects as per-object dicts, for the evaluators (which read rows of the
project's schema but may not import ``hftrain.data``; same as ``hftrain.data.schema.objects_of``)."""

from __future__ import annotations


def per_object(objects) -> list[dict]:
    """``row["objects"]`` as a list of dicts, whether stored as the Hub's dict of lists (the
    project's schema) or as a list of per-object dicts."""
    if isinstance(objects, dict):
        keys = list(objects)
        count = len(objects[keys[0]]) if keys else 0
        return [{key: objects[key][i] for key in keys} for i in range(count)]
    return list(objects)
