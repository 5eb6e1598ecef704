"""Who is calling: the one argument every catalog read and change carries.

An API key, a dashboard user, the local CLI operator and the system's own jobs all reach
the services as a ``Principal``. Services decide from it what the caller may see and do,
and name it in the audit log, so every entry point behaves alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from services.errors import Forbidden


class Scope(StrEnum):
    """What a caller may do; admin implies the others.

    ``moderate`` is the trust-and-safety team's: the flagged set, the review queue and the
    audit log, and sight of quarantined images, without the catalog's administration
    (taxonomy, keys, accounts, jobs).
    """

    SEARCH = "search"
    INGEST = "ingest"
    MODERATE = "moderate"
    ADMIN = "admin"


class Role(StrEnum):
    """A dashboard account's role: what its person may see and change."""

    VIEWER = "viewer"  # searches the catalog
    MODERATOR = "moderator"  # and reviews quarantined images, keeps the flagged set
    ADMIN = "admin"  # and everything else: uploads, taxonomy, jobs, keys, accounts

    @property
    def scopes(self) -> frozenset[Scope]:
        """The scopes this role grants."""
        return ROLE_SCOPES[self]


ROLE_SCOPES = {
    Role.VIEWER: frozenset({Scope.SEARCH}),
    Role.MODERATOR: frozenset({Scope.SEARCH, Scope.MODERATE}),
    Role.ADMIN: frozenset({Scope.ADMIN}),
}


@dataclass(frozen=True)
class Principal:
    """A caller: a name for the audit log and the scopes it holds."""

    name: str  # "key:<name>", "user:<name>", "cli:<user>", "system:<job>"
    scopes: frozenset[Scope]

    def allows(self, scope: Scope) -> bool:
        """Whether this caller may do what needs ``scope``."""
        return scope in self.scopes or Scope.ADMIN in self.scopes

    @property
    def is_admin(self) -> bool:
        """Whether this caller administers the catalog."""
        return Scope.ADMIN in self.scopes

    @property
    def sees_moderation(self) -> bool:
        """Moderators and admins see quarantined images and moderation internals."""
        return self.allows(Scope.MODERATE)

    def require(self, scope: Scope) -> None:
        """Raise Forbidden unless the caller holds ``scope``.

        Interfaces check scopes before calling; services check again so that no entry
        point can skip the rule.
        """
        if not self.allows(scope):
            raise Forbidden(f"{self.name} lacks the {scope.value!r} scope")


def system(job: str) -> Principal:
    """The system acting on its own (an ingest's automatic quarantine, a scan)."""
    return Principal(f"system:{job}", frozenset({Scope.ADMIN}))


def operator(user: str = "operator") -> Principal:
    """Whoever runs the CLI on a machine holding the data: full rights, as its files give."""
    return Principal(f"cli:{user}", frozenset({Scope.ADMIN}))
