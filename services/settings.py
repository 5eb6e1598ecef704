"""Typed settings: environment (``SIGHTLINE_`` prefix, ``__`` for nesting) over a TOML file.

Built once at an entry point and passed down; nothing reads the environment elsewhere.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from services.errors import ConfigError

DEFAULT_MODEL = "sentence-transformers/clip-ViT-B-32"
CONFIG_FILE_ENV = "SIGHTLINE_CONFIG_FILE"


class IndexBackend(StrEnum):
    """Where vectors live: in-process Qdrant Edge, or a Qdrant server through qdrant-client."""

    EMBEDDED = "embedded"
    SERVER = "server"


class IndexSettings(BaseModel):
    """Vector index deployment."""

    backend: IndexBackend = IndexBackend.EMBEDDED
    path: Path | None = Field(
        default=None, description="Embedded shards' directory; defaults to DATA_DIR/index."
    )
    url: str | None = Field(default=None, description="Qdrant server URL (server backend).")
    api_key: SecretStr | None = Field(default=None, description="Qdrant API key (server).")
    timeout_s: int = Field(default=10, ge=1, le=600)
    collection_prefix: str = Field(
        default="",
        pattern=r"^[A-Za-z0-9_-]*$",
        description="Prefix for collection names; unset = the prefix last switched to by "
        "a re-embed (or none).",
    )
    hnsw_ef: int = Field(
        default=512,
        ge=4,
        le=4096,
        description="Search-time HNSW ef; text queries sit off the image clusters (the "
        "modality gap) and need a wide beam for recall@10 >= 0.95.",
    )
    text_hnsw_ef: int | None = Field(
        default=None,
        ge=4,
        le=16384,
        description="HNSW ef for text queries (unset: hnsw_ef). Text queries sit in CLIP's "
        "modality gap; at a million int8-quantized vectors recall@10 needed 4096 "
        "(bench/query.py).",
    )
    quantization: Literal["none", "int8"] = Field(
        default="none",
        description="Scalar int8 quantization of new collections' vectors (a quarter of the "
        "RAM; candidates rescored with the originals).",
    )
    vectors_on_disk: bool = Field(
        default=False, description="New collections keep original vectors in mmapped files."
    )
    oversampling: float = Field(
        default=2.0, ge=1.0, le=16.0, description="Candidates rescored per result (int8)."
    )
    replication_factor: int = Field(
        default=1, ge=1, le=16, description="Copies of each shard of new collections (server)."
    )
    write_consistency_factor: int = Field(
        default=1,
        ge=1,
        le=16,
        description="Copies that must acknowledge a write (server); at most replication_factor.",
    )

    @model_validator(mode="after")
    def _consistency_within_replicas(self) -> IndexSettings:
        if self.write_consistency_factor > self.replication_factor:
            raise ValueError("index.write_consistency_factor exceeds index.replication_factor")
        return self

    @model_validator(mode="after")
    def _server_needs_url(self) -> IndexSettings:
        if self.backend is IndexBackend.SERVER and not self.url:
            raise ValueError("index.backend=server needs index.url (SIGHTLINE_INDEX__URL)")
        return self


class StorageSettings(BaseModel):
    """Where originals, thumbnails and flagged originals are kept."""

    backend: Literal["filesystem", "s3"] = Field(
        default="filesystem",
        description="filesystem (under DATA_DIR) or s3 (any S3-compatible object storage: "
        "what workers on several machines need).",
    )
    bucket: str | None = Field(default=None, description="Bucket (s3).")
    prefix: str = Field(
        default="", pattern=r"^[A-Za-z0-9_./-]*$", description="Key prefix in the bucket."
    )
    endpoint_url: str | None = Field(
        default=None, description="S3 API endpoint for MinIO, Ceph, R2 and the like (s3)."
    )
    region: str | None = Field(default=None, description="Region (s3).")
    access_key_id: SecretStr | None = Field(
        default=None, description="Unset: the AWS credential chain (env, profile, role)."
    )
    secret_access_key: SecretStr | None = Field(default=None)

    @model_validator(mode="after")
    def _s3_needs_bucket(self) -> StorageSettings:
        if self.backend == "s3" and not self.bucket:
            raise ValueError("storage.backend=s3 needs storage.bucket (SIGHTLINE_STORAGE__BUCKET)")
        return self


class ImageLimits(BaseModel):
    """Bounds on what an upload may cost us to decode."""

    max_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(default=40_000_000, ge=64 * 64)
    max_side: int = Field(default=12_000, ge=64)
    max_frames: int = Field(default=200, ge=1)


class QueueSettings(BaseModel):
    """Event delivery: Celery over Redis, or in-process when no broker is configured."""

    # Secrets: a Redis URL carries its password (redis://:PASSWORD@host), so neither is
    # shown when settings are printed or logged; ``broker`` and ``backend`` read them.
    broker_url: SecretStr | None = Field(
        default=None, description="Redis URL of the Celery broker; unset = in-process queue."
    )
    result_backend: SecretStr | None = Field(
        default=None, description="Defaults to the broker URL."
    )
    visibility_timeout_s: int = Field(
        default=3600,
        ge=5,
        description="Unacknowledged tasks are redelivered after this; must exceed the longest task.",
    )
    batch_size: int | None = Field(
        default=None, ge=1, le=1024, description="Defaults to BATCH_SIZE."
    )
    batch_max_wait_s: float = Field(default=0.5, ge=0.0, le=60.0)
    max_retries: int = Field(default=5, ge=0, le=100, description="Retries of transient failures.")
    retry_backoff_s: float = Field(default=2.0, ge=0.0)
    retry_backoff_max_s: float = Field(default=120.0, ge=0.0)
    max_deliveries: int = Field(
        default=3, ge=1, le=100, description="Deliveries of one item before it is given up."
    )

    @property
    def broker(self) -> str | None:
        """The broker URL in clear (for the clients that connect with it)."""
        return self.broker_url.get_secret_value() if self.broker_url else None

    @property
    def backend(self) -> str | None:
        """The result backend URL in clear; the broker's when unset."""
        return self.result_backend.get_secret_value() if self.result_backend else self.broker


class FetchSettings(BaseModel):
    """Downloading images by URL."""

    timeout_s: float = Field(
        default=15.0, gt=0, le=300, description="Longest wait for a connection or one read."
    )
    deadline_s: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="Longest a whole download may take, redirects and every read included.",
    )
    max_redirects: int = Field(default=3, ge=0, le=10)
    allow_networks: list[str] = Field(
        default_factory=list,
        description="CIDRs allowed even if private/loopback (e.g. an internal CDN).",
    )
    user_agent: str = "Sightline/0.1 (+image ingest)"


class ModerationSettings(BaseModel):
    """When an upload counts as resembling a flagged entry (see README, Moderation)."""

    image_threshold: float = Field(
        default=0.95, ge=-1.0, le=1.0, description="Cosine to a flagged image that quarantines."
    )
    text_threshold: float = Field(
        default=0.30, ge=-1.0, le=1.0, description="Cosine to a flagged text concept."
    )
    category_thresholds: dict[str, float] = Field(
        default_factory=dict, description="Per-category thresholds (entries may set their own)."
    )
    phash_strong: int = Field(
        default=5, ge=0, le=64, description="pHash Hamming distance that alone quarantines."
    )
    phash_weak: int = Field(
        default=10, ge=0, le=64, description="Distance that quarantines with a borderline cosine."
    )
    borderline_margin: float = Field(
        default=0.1,
        ge=0.0,
        le=2.0,
        description="How far below its threshold a cosine is borderline.",
    )
    colour_candidate: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Colour-histogram overlap that makes an entry a layout candidate.",
    )
    layout_candidates: int = Field(
        default=4, ge=0, le=64, description="Entries per image given the aligned-layout check."
    )
    layout_threshold: float = Field(
        default=0.88, ge=0.0, le=1.0, description="Layout agreement that alone quarantines."
    )
    layout_floor: float = Field(
        default=0.6, ge=0.0, le=1.0, description="Layout agreement a pHash match needs."
    )
    layout_veto: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Layout agreement under which a match by fewer than keypoint_threshold "
        "keypoints is refused (where both layouts can be compared): two posters in one "
        "typeface agree on a few glyphs, not on where their text lies.",
    )
    keypoint_threshold: int = Field(
        default=40,
        ge=1,
        le=400,
        description="Agreeing keypoints that alone quarantine (entries whose copies verify).",
    )
    keypoint_floor: int = Field(
        default=12,
        ge=0,
        le=400,
        description="Agreeing keypoints a layout or pHash match of such an entry needs.",
    )
    keypoint_agreement_floor: float = Field(
        default=0.6,
        ge=0.0,
        le=1.0,
        description="Share of grid cells that must agree once the image is laid over the "
        "entry by the keypoints' transform, for any keypoint match: a repeated pattern "
        "(stripes, dots, bricks) puts many keypoints on one transform, not the same pixels.",
    )
    keypoint_agreement_threshold: float = Field(
        default=0.85,
        ge=0.0,
        le=1.0,
        description="Agreement that lets a match with only keypoint_floor keypoints count "
        "(a heavily cropped or captioned copy keeps few keypoints, all its pixels).",
    )
    cache_s: float = Field(
        default=2.0, ge=0.0, description="How long a process reuses its copy of the flagged set."
    )


class WebSettings(BaseModel):
    """The HTTP service."""

    secret_key: SecretStr | None = Field(
        default=None, description="Signs sessions; required unless fully embedded."
    )
    rate_limit: str = Field(default="600/minute", description="Per API key (flask-limiter syntax).")
    dashboard_image_rate_limit: str = Field(
        default="6000/minute",
        description="Dashboard thumbnails and originals, per signed-in user: a results page "
        "shows dozens, and paging quickly must not break them.",
    )
    rate_limit_storage: str | None = Field(
        default=None, description="limits storage URI; defaults to the broker's Redis, else memory."
    )
    status_sample_s: float = Field(
        default=30.0,
        ge=0.0,
        description="How often each web process samples index size, queue depth and "
        "failures for the status page's last-hour charts (0: no sampling).",
    )
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    max_files_per_upload: int = Field(default=256, ge=1)
    metrics_public: bool = Field(default=True, description="Serve /metrics without a key.")
    workers: int = Field(
        default=2,
        ge=1,
        le=64,
        description="gunicorn worker processes (infra/gunicorn.conf.py). Each loads the "
        "model (ViT-B/32: about 0.6-0.8 GB RSS), so this is a memory decision, not a core "
        "count: scale out with more pods or hosts, not more workers per host.",
    )
    threads: int = Field(
        default=4,
        ge=1,
        le=64,
        description="gunicorn threads per worker, for I/O-bound requests (thumbnails, uploads, "
        "job status); encoding is shared between them.",
    )
    trusted_proxies: int = Field(
        default=0,
        ge=0,
        le=5,
        description="Reverse proxies in front of the app whose X-Forwarded-For/-Proto/-Host "
        "headers are believed (werkzeug ProxyFix); 0 trusts none.",
    )


class Settings(BaseSettings):
    """Everything Sightline can be told, validated at start-up."""

    model_config = SettingsConfigDict(
        env_prefix="SIGHTLINE_", env_nested_delimiter="__", extra="forbid"
    )

    data_dir: Path = Field(default=Path("data"), description="Images, thumbnails, local index.")
    model: str = Field(
        default=DEFAULT_MODEL,
        min_length=1,
        description="sentence-transformers model name or local directory.",
    )
    text_model: str | None = Field(
        default=None,
        min_length=1,
        description="A text-only model trained into the image model's space (e.g. "
        "sentence-transformers/clip-ViT-B-32-multilingual-v1 for clip-ViT-B-32): text "
        "search, tagging and label vectors use it. Unset: the image model's own text tower.",
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Let models that ship their own code (jina-clip-v2) run it. Only for "
        "models you trust: their code runs with Sightline's permissions.",
    )
    device: str = Field(default="cpu", pattern=r"^(cpu|cuda(:\d+)?|mps)$")
    runtime: Literal["torch", "onnx", "onnx-int8"] = Field(
        default="torch",
        description="What runs the model: torch, or onnxruntime (fp32, or int8 weights) on "
        "towers exported once and gated against torch; a runtime that fails its gate falls "
        "back and says why.",
    )
    onnx_cache: Path | None = Field(
        default=None, description="Where ONNX exports are kept (default DATA_DIR/onnx)."
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        le=512,
        description="Intra-op threads per process for the model. Unset: this host's cores "
        "divided by the processes that share them (SIGHTLINE_PROCESSES, set by gunicorn's "
        "config and `sightline worker`).",
    )
    processes: int = Field(
        default=1, ge=1, le=512, description="Processes on this host that each run the model."
    )
    spin: bool | None = Field(
        default=None,
        description="Whether onnxruntime's threads spin-wait between operators: the lowest "
        "latency where the model runs alone (queries), but slower where a worker's decode "
        "thread shares the cores. Unset: off in `sightline worker` processes, on elsewhere.",
    )
    query_cache_size: int = Field(
        default=1024, ge=0, le=1_000_000, description="Text-query vectors kept per process."
    )
    batch_size: int = Field(default=32, ge=1, le=1024, description="Images per model call.")
    index: IndexSettings = Field(default_factory=IndexSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    images: ImageLimits = Field(default_factory=ImageLimits)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    fetch: FetchSettings = Field(default_factory=FetchSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    moderation: ModerationSettings = Field(default_factory=ModerationSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_FILE_ENV)
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)

    def for_worker(self) -> Settings:
        """These settings as an ingest worker process runs them: unless configured,
        onnxruntime's threads do not spin, so the decode thread that prepares the next
        batch is not held off the cores."""
        if self.spin is None:
            return self.model_copy(update={"spin": False})
        return self

    @property
    def ingest_batch_size(self) -> int:
        """Events a worker buffers before processing them together."""
        return self.queue.batch_size or 4 * self.batch_size

    @property
    def inference_threads(self) -> int:
        """Threads for one process's model: the explicit setting, else the cores this
        process may use divided by the processes sharing them, so N model processes on C
        cores never run more than C threads together."""
        if self.threads:
            return self.threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        cores = cores or os.cpu_count() or 1
        quota = _cgroup_cpus()  # a container's CPU limit (compose `cpus`, Kubernetes limits)
        if quota is not None:
            cores = min(cores, quota)
        return max(1, cores // self.processes)

    @property
    def onnx_path(self) -> Path:
        """Directory of ONNX exports."""
        return self.onnx_cache or self.data_dir / "onnx"

    @property
    def embedded(self) -> bool:
        """True when everything runs in one process (embedded index, no broker)."""
        return self.index.backend is IndexBackend.EMBEDDED and not self.queue.broker

    @property
    def index_path(self) -> Path:
        """Directory of the embedded index."""
        return self.index.path or self.data_dir / "index"

    @property
    def images_path(self) -> Path:
        """Directory of the content-addressed image store."""
        return self.data_dir / "images"


def _cgroup_cpus(path: Path = Path("/sys/fs/cgroup/cpu.max")) -> int | None:
    """Whole CPUs a cgroup v2 quota allows this process ("max": none), rounded up."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, -(-int(quota) // int(period)))


def load_settings(**overrides: Any) -> Settings:
    """Build Settings, turning validation errors into one readable ConfigError."""
    config_file = os.environ.get(CONFIG_FILE_ENV)
    if config_file and not Path(config_file).is_file():
        raise ConfigError(f"{CONFIG_FILE_ENV}={config_file}: no such file")
    try:
        return Settings(**overrides)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"]) or "settings"
            env = "SIGHTLINE_" + "__".join(str(p).upper() for p in err["loc"])
            lines.append(f"  {where} ({env}): {err['msg']}")
        raise ConfigError("invalid settings:\n" + "\n".join(lines)) from e
