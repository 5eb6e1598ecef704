"""Flask service: JSON API (``/api/v1``), health, metrics; importing it has no side effects."""

from web.app import create_app

__all__ = ["create_app"]
