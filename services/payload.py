"""What an image's payload holds, and which of it each caller may see.

The fields Sightline writes are declared here once: intake refuses them as user metadata,
moderation writes its statuses, and every read shapes payloads through ``shape_for``,
so no entry point can serve moderation internals or hashes to a caller who may not see
them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.auth.principal import Principal
from services.index.base import PayloadFilter

# Moderation states of an image.
QUARANTINED = "quarantined"
APPROVED = "approved"
CLEAR = "clear"

# Fields the system writes that every caller who can see the image may read.
PUBLIC_FIELDS = frozenset(
    {
        "image_id",
        "filename",
        "format",
        "width",
        "height",
        "bytes",
        "ingested_at",
        "tags",
        "tag_scores",
        "taxonomy_version",
    }
)
# Fields the system writes for its own use: moderation matches, reviewer and reason,
# perceptual hashes. Moderators and admins only.
INTERNAL_FIELDS = frozenset({"moderation", "moderation_status", "phash"})
# Every system field: user metadata may not use these names.
SYSTEM_FIELDS = PUBLIC_FIELDS | INTERNAL_FIELDS


def can_see(caller: Principal, payload: Mapping[str, Any]) -> bool:
    """Quarantined images exist only for moderators and admins."""
    return caller.sees_moderation or payload.get("moderation_status") != QUARANTINED


def visible_filter(caller: Principal, flt: PayloadFilter | None = None) -> PayloadFilter:
    """``flt`` narrowed to what the caller may see."""
    flt = flt or PayloadFilter()
    if caller.sees_moderation:
        return flt
    return PayloadFilter(
        equals=flt.equals,
        any_of=flt.any_of,
        ranges=flt.ranges,
        not_equals={**flt.not_equals, "moderation_status": QUARANTINED},
        exclude_ids=flt.exclude_ids,
    )


def shape_for(caller: Principal, payload: Mapping[str, Any]) -> dict[str, Any]:
    """The payload as this caller may read it: declared public fields and user metadata.

    Every field the system writes must be declared in ``SYSTEM_FIELDS`` (a test ingests
    through the whole pipeline and checks), so an undeclared internal field cannot pass
    as user metadata.
    """
    if caller.sees_moderation:
        return dict(payload)
    return {k: v for k, v in payload.items() if k in PUBLIC_FIELDS or k not in SYSTEM_FIELDS}
