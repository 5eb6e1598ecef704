"""Every error the domain raises on purpose, in one tree.

Six bases say what kind of failure it is; interfaces map the bases (not each leaf) to
HTTP statuses and exit codes in one table, so a new error needs no new mapping. Raise
with ``from e`` so the cause stays in the log.
"""

from __future__ import annotations


class SightlineError(Exception):
    """Base of every error the domain raises on purpose."""

    code = "error"


# -- the bases -----------------------------------------------------------------------------


class InvalidInput(SightlineError):
    """The caller sent something we refuse; nothing was changed. Not worth retrying."""

    code = "invalid_input"


class NotFound(SightlineError):
    """The referenced image, job, entry or collection does not exist (or is hidden)."""

    code = "not_found"


class Forbidden(SightlineError):
    """The caller is known but may not do this."""

    code = "forbidden"


class Conflict(SightlineError):
    """The request is valid but the current state does not allow it."""

    code = "conflict"


class Unavailable(SightlineError):
    """Something we depend on is down or full; usually transient, so retrying may succeed."""

    code = "unavailable"


class ConfigError(SightlineError):
    """Settings failed validation at start-up, or a deployment is wired wrongly."""

    code = "config_error"


# -- invalid input ---------------------------------------------------------------------------


class InvalidImage(InvalidInput):
    """The bytes are not an image we accept (format, corruption, size)."""

    code = "invalid_image"


class ImageTooLarge(InvalidImage):
    """Over the byte, pixel or frame limits (decompression bombs included)."""

    code = "image_too_large"


class UnsupportedFormat(InvalidImage):
    """A real file, but not one of the allowed raster formats."""

    code = "unsupported_format"


class InvalidMetadata(InvalidInput):
    """Metadata that cannot be stored (reserved keys, wrong types, unreadable file)."""

    code = "invalid_metadata"


class InvalidQuery(InvalidInput):
    """A search or tagging request that cannot be answered as asked (k, text, labels)."""

    code = "invalid_query"


class InvalidFilter(InvalidInput):
    """A filter expression that cannot be parsed."""

    code = "invalid_filter"


class InvalidTaxonomy(InvalidInput):
    """A taxonomy document that does not validate."""

    code = "invalid_taxonomy"


class InvalidFlag(InvalidInput):
    """A flagged-set request that cannot be carried out."""

    code = "invalid_flag"


class InvalidAccount(InvalidInput):
    """A username or password that cannot be used."""

    code = "invalid_account"


class FetchRefused(InvalidInput):
    """The URL is not allowed (scheme, private address, too many redirects, too large)."""

    code = "fetch_refused"


class InvalidBackup(InvalidInput):
    """A backup that is incomplete, of a newer format, or whose files fail their
    checksums; nothing was restored from it."""

    code = "invalid_backup"


# -- conflicts -------------------------------------------------------------------------------


class ModelMismatch(Conflict):
    """A collection was built with another model than the one loaded."""

    code = "model_mismatch"


class NoTaxonomy(Conflict):
    """Tagging was asked for, but no taxonomy is loaded and no labels were given."""

    code = "no_taxonomy"


# -- unavailable -----------------------------------------------------------------------------


class ModelUnavailable(Unavailable):
    """The configured model cannot be loaded (offline and not cached, bad path)."""

    code = "model_unavailable"


class IndexUnavailable(Unavailable):
    """The vector index cannot be reached or opened."""

    code = "index_unavailable"


class BrokerUnavailable(Unavailable):
    """Redis (broker, job store, audit stream, shared stores) cannot be reached."""

    code = "broker_unavailable"


class StorageUnavailable(Unavailable):
    """The image store cannot be written or read (disk full, read-only, unreachable)."""

    code = "storage_unavailable"


class FetchFailed(Unavailable):
    """The remote host did not answer usefully (timeout, 5xx); worth retrying later."""

    code = "fetch_failed"
