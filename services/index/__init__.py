"""The vector index: one interface (``VectorIndex``), an embedded and a server adapter."""

from services.index.base import (
    Hit,
    PayloadFilter,
    PointData,
    Range,
    Record,
    VectorIndex,
)

__all__ = ["Hit", "PayloadFilter", "PointData", "Range", "Record", "VectorIndex"]
