"""Moderation as callers use it: the flagged set, checks, the review queue, the audit log.

Every change is audited here, so the API, the dashboard and the CLI leave the same trail.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.audit import AuditEvent, AuditLog
from services.auth.principal import Principal, Scope
from services.index.base import Record
from services.ingest.fetch import fetch_image
from services.jobs.kinds import Kind
from services.jobs.service import JobService
from services.jobs.store import SCAN_ITEM
from services.moderation.flagged import FlaggedEntry, FlaggedSet
from services.moderation.review import Decision, DecisionResult, ReviewService
from services.search.service import SearchService
from services.settings import FetchSettings


class ModerationService:
    """The trust-and-safety side of the catalog, for moderators and admins (checks: ingest
    keys too)."""

    def __init__(
        self,
        flagged: FlaggedSet,
        review: ReviewService,
        search: SearchService,
        jobs: JobService,
        audit: AuditLog,
        fetch_settings: FetchSettings,
        max_bytes: int,
    ) -> None:
        self.flagged = flagged
        self.review = review
        self.search = search
        self.jobs = jobs
        self.audit = audit
        self.fetch_settings = fetch_settings
        self.max_bytes = max_bytes

    # -- the flagged set ------------------------------------------------------------------

    def entries(self, caller: Principal) -> list[FlaggedEntry]:
        """Every flagged entry, oldest first."""
        caller.require(Scope.MODERATE)
        return self.flagged.entries()

    def image_bytes(
        self,
        caller: Principal,
        image_id: str | None,
        url: str | None,
        scope: Scope = Scope.MODERATE,
    ) -> bytes:
        """The bytes of a stored image the caller can see, or of a URL (SSRF-guarded)."""
        caller.require(scope)
        if image_id is not None:
            data, _ = self.search.original(caller, image_id, scope=scope)
            return data
        data, _ = fetch_image(str(url), self.fetch_settings, self.max_bytes)
        return data

    def add_image(
        self,
        caller: Principal,
        data: bytes,
        category: str,
        source: str = "upload",
        threshold: float | None = None,
        note: str = "",
        scan: bool = True,
    ) -> tuple[FlaggedEntry, str | None]:
        """Flag an image; returns the entry and its retroactive scan job (if ``scan``)."""
        caller.require(Scope.MODERATE)
        entry = self.flagged.add_image(data, category, caller.name, source, threshold, note)
        return entry, self._added(caller, entry, scan)

    def add_text(
        self,
        caller: Principal,
        text: str,
        category: str,
        threshold: float | None = None,
        note: str = "",
        scan: bool = True,
    ) -> tuple[FlaggedEntry, str | None]:
        """Flag a concept described in words; returns the entry and its scan job."""
        caller.require(Scope.MODERATE)
        entry = self.flagged.add_text(text, category, caller.name, threshold, note)
        return entry, self._added(caller, entry, scan)

    def _added(self, caller: Principal, entry: FlaggedEntry, scan: bool) -> str | None:
        self.audit.record(caller.name, "flag.add", entry.id, entry.note or None, entry.as_dict())
        return self.scan(caller, [entry.id]) if scan else None

    def edit(self, caller: Principal, entry_id: str, **changes: Any) -> FlaggedEntry:
        """Change an entry's category, threshold or note."""
        caller.require(Scope.MODERATE)
        entry = self.flagged.update(entry_id, **changes)
        self.audit.record(caller.name, "flag.edit", entry.id, None, changes)
        return entry

    def remove(self, caller: Principal, entry_id: str) -> FlaggedEntry:
        """Delete an entry; images it quarantined stay quarantined until reviewed."""
        caller.require(Scope.MODERATE)
        entry = self.flagged.remove(entry_id)
        self.audit.record(caller.name, "flag.remove", entry.id, None, entry.as_dict())
        return entry

    def scan(self, caller: Principal, entry_ids: Sequence[str] | None = None) -> str:
        """Queue a re-check of the catalog against flagged entries (all when None)."""
        caller.require(Scope.MODERATE)
        ids = list(entry_ids) if entry_ids else None
        job_id = self.jobs.start(
            "moderation_scan",
            Kind.SCAN,
            lambda job: [{"job_id": job, "entry_ids": ids}],
            keys=[SCAN_ITEM],
            meta={"entries": ids or "all"},
        )
        self.audit.record(caller.name, "moderation.scan", job_id, None, {"entries": ids or "all"})
        return job_id

    def run_scan(self, job_id: str, entry_ids: Sequence[str] | None) -> int:
        """The scan job's body (run by a worker); returns how many were newly quarantined."""
        return self.review.scan(self.jobs.store, job_id, entry_ids)

    # -- checks ---------------------------------------------------------------------------

    def check_bytes(self, caller: Principal, data: bytes) -> dict[str, Any]:
        """Check an image against the flagged set without storing it: the verdict and its
        category, plus the matched entries and scores for admins."""
        caller.require(Scope.INGEST)
        return self.flagged.check_bytes(data).as_dict(with_matches=caller.sees_moderation)

    def check(self, caller: Principal, image_id: str | None, url: str | None) -> dict[str, Any]:
        """Check a stored image (one the caller can see) or a URL's image."""
        data = self.image_bytes(caller, image_id, url, Scope.INGEST)
        return self.flagged.check_bytes(data).as_dict(with_matches=caller.sees_moderation)

    # -- review ---------------------------------------------------------------------------

    def queue(
        self, caller: Principal, limit: int = 50, offset: str | None = None
    ) -> tuple[list[Record], str | None]:
        """Quarantined images with their matches, a page at a time."""
        caller.require(Scope.MODERATE)
        return self.review.queue(limit, offset)

    def pending(self, caller: Principal) -> int:
        """How many images wait for review."""
        caller.require(Scope.MODERATE)
        return self.review.pending()

    def decide(
        self,
        caller: Principal,
        image_ids: Sequence[str],
        decision: Decision,
        reason: str | None = None,
        add_to_flagged: bool = False,
        category: str | None = None,
    ) -> list[DecisionResult]:
        """Approve or reject quarantined images; each decision is audited."""
        return self.review.decide(image_ids, decision, caller, reason, add_to_flagged, category)

    def audit_log(
        self,
        caller: Principal,
        limit: int = 100,
        target: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        before: str | None = None,
    ) -> list[AuditEvent]:
        """The audit log, newest first, filtered and paged as ``AuditLog.list``."""
        caller.require(Scope.MODERATE)
        return self.audit.list(limit, target, actor, action, before)
