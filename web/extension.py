"""What the app holds for its requests: built once in ``create_app`` and passed in."""

from __future__ import annotations

from dataclasses import dataclass

from services.accounts import AccountStore
from services.apikeys import KeyStore
from services.container import Services
from services.settings import Settings
from services.uploads import UploadService
from web.metrics import Metrics
from workers.runtime import Runtime


@dataclass
class Sightline:
    """Per-app resources, reachable as ``current_app.extensions["sightline"]``."""

    settings: Settings
    runtime: Runtime
    keys: KeyStore
    accounts: AccountStore
    metrics: Metrics

    @property
    def services(self) -> Services:
        """The domain services."""
        return self.runtime.services

    @property
    def uploads(self) -> UploadService:
        """The publishing side of ingestion."""
        return self.runtime.uploads
