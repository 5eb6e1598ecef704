"""Errors the domain raises; interfaces map them to exit codes and HTTP statuses in one place."""

from __future__ import annotations


class SightlineError(Exception):
    """Base of every error the domain raises on purpose."""

    code = "error"


class InvalidImage(SightlineError):
    """The bytes are not an image we accept (format, corruption, size)."""

    code = "invalid_image"


class ImageTooLarge(InvalidImage):
    """Over the byte, pixel or frame limits (decompression bombs included)."""

    code = "image_too_large"


class UnsupportedFormat(InvalidImage):
    """A real file, but not one of the allowed raster formats."""

    code = "unsupported_format"


class InvalidMetadata(SightlineError):
    """Metadata that cannot be stored (reserved keys, wrong types, unreadable file)."""

    code = "invalid_metadata"


class ModelUnavailable(SightlineError):
    """The configured model cannot be loaded (offline and not cached, bad path)."""

    code = "model_unavailable"


class ModelMismatch(SightlineError):
    """A collection was built with another model than the one loaded."""

    code = "model_mismatch"


class NotFound(SightlineError):
    """The referenced image, point or collection does not exist."""

    code = "not_found"


class IndexUnavailable(SightlineError):
    """The vector index cannot be reached or opened; usually transient."""

    code = "index_unavailable"


class ConfigError(SightlineError):
    """Settings failed validation at start-up."""

    code = "config_error"
