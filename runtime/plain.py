"""`plain(obj)`: NumPy scalars and arrays inside a result object turned into plain Python values, so
that `json.dumps(dataclasses.asdict(stats))` works (the serve protocols send stats as JSON). Applied
where results are recorded, not where they are sent, so every consumer sees the same plain types."""

from __future__ import annotations

import dataclasses

import numpy as np


def plain(obj: object) -> object:
    """int/float/bool/str/None, and lists and dicts of them, for any NumPy value inside `obj`."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, dict):
        return {plain(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def plain_fields(obj):
    """`obj` (a dataclass instance) with every field made `plain`, in place; returns `obj`."""
    for f in dataclasses.fields(obj):
        setattr(obj, f.name, plain(getattr(obj, f.name)))
    return obj
