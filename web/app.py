"""The Flask application factory: builds (or takes) the runtime and wires the routes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from flask import Flask, Response, has_request_context, request, session
from flask.sessions import SecureCookieSessionInterface
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_wtf.csrf import CSRFProtect
from werkzeug.middleware.proxy_fix import ProxyFix

from services.auth.principal import system
from services.errors import ConfigError
from services.history import Sample, StatusHistory
from services.jobs.kinds import QUEUES
from services.runtime import Runtime, build_runtime
from services.settings import Settings, load_settings
from services.storage.secret import session_secret
from web import admin, api, docs, health, moderation_api
from web.endpoint import verified_key
from web.errors import register_error_handlers
from web.extension import HISTORY, METRICS, RUNTIME
from web.metrics import Metrics
from workers.dispatch import dispatcher_for

if TYPE_CHECKING:
    from flask.typing import RouteCallable

CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'self'; frame-ancestors 'none'; form-action 'self'"
)


def _rate_key() -> str:
    """Limits apply per verified API key (however its header is written), per dashboard
    user, and otherwise per client address."""
    key = verified_key()
    if key is not None:
        return f"key:{key.id}"
    if user := session.get("user"):
        return f"user:{user}"
    return "addr:" + get_remote_address()


def _status_reader(runtime: Runtime) -> Callable[[], Sample]:
    """What the status charts sample: shared state, so every process draws the same."""
    who = system("status")

    def read() -> Sample:
        try:
            queued: int | None = sum(runtime.dispatcher.queue_depths().values())
        except Exception:  # no broker answering: the chart shows a gap
            queued = None
        failed = sum(j.counts.get("failed", 0) for j in runtime.jobs.recent(who, 100))
        indexed = runtime.index.count(runtime.collections.images)
        return Sample(time.time(), indexed, queued, failed)

    return read


def _security_headers(response: Response) -> Response:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    if request.is_secure:
        response.headers.setdefault(
            "Strict-Transport-Security", "max-age=63072000; includeSubDomains"
        )
    return response


class _SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, with the cookie marked ``Secure`` whenever the
    request came over TLS (directly, or through a trusted proxy that says so)."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or (
            has_request_context() and request.is_secure
        )


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> Flask:
    """Build the app: validate settings, load the model, open the index, wire the routes.

    Raises:
        ConfigError: no secret key outside the fully embedded single-process mode.
    """
    settings = settings or load_settings()
    secret = settings.web.secret_key.get_secret_value() if settings.web.secret_key else None
    if secret is None and not settings.embedded:
        raise ConfigError(
            "SIGHTLINE_WEB__SECRET_KEY is required when a Qdrant server or a broker is "
            "configured (several processes must share it)"
        )
    runtime = runtime or build_runtime(settings, dispatcher_for(settings))
    runtime.open()

    app = Flask("sightline")
    app.session_interface = _SessionInterface()
    if hops := settings.web.trusted_proxies:
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops
        )
    app.config.update(
        # Single process: a key kept under DATA_DIR, so a restart signs nobody out.
        SECRET_KEY=secret or session_secret(settings.data_dir),
        MAX_CONTENT_LENGTH=settings.web.max_request_bytes,
        JSON_SORT_KEYS=False,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=12 * 3600,
        WTF_CSRF_TIME_LIMIT=None,  # tokens live as long as the session
    )
    metrics = Metrics()
    metrics.install(app)
    runtime.encoder.observer = metrics.observe_embedding
    images = runtime.collections.images
    metrics.gauge(metrics.index_size, images, lambda: float(runtime.index.count(images)))
    runtime.search.queries.observer = metrics.observe_query
    if not runtime.local:

        def depth(queue: str) -> Callable[[], float]:
            return lambda: float(runtime.dispatcher.queue_depths()[queue])

        for queue in QUEUES:
            metrics.gauge(metrics.queue_depth, queue, depth(queue))

    storage = settings.web.rate_limit_storage or settings.queue.broker or "memory://"
    limiter = Limiter(
        _rate_key,
        app=app,
        default_limits=[settings.web.rate_limit],
        storage_uri=storage,
        headers_enabled=True,
        strategy="moving-window",
    )
    limiter.exempt(health.bp)

    app.extensions[RUNTIME] = runtime
    app.extensions[METRICS] = metrics
    history = StatusHistory(_status_reader(runtime), settings.web.status_sample_s or 30.0)
    app.extensions[HISTORY] = history
    if settings.web.status_sample_s > 0:
        history.start()
    register_error_handlers(app)
    app.after_request(_security_headers)
    app.register_blueprint(api.bp)
    app.register_blueprint(moderation_api.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(docs.bp)
    # Forms and dashboard scripts carry a CSRF token; the API authenticates every request
    # with a key header instead of a cookie, so it is exempt.
    csrf = CSRFProtect(app)
    for blueprint in (api.bp, moderation_api.bp, health.bp, docs.bp):
        csrf.exempt(blueprint)
    # Password guessing: login posts get their own, much smaller budget per client.
    login_budget = limiter.limit("20/minute", methods=["POST"], key_func=get_remote_address)
    app.view_functions["admin.login"] = cast(
        "RouteCallable", login_budget(app.view_functions["admin.login"])
    )
    # Dashboard images get a budget that fits browsing, per signed-in user (_rate_key);
    # API keys keep the default limit, thumbnails included.
    browsing = limiter.limit(settings.web.dashboard_image_rate_limit, key_func=_rate_key)
    for view in ("admin.thumbnail", "admin.original"):
        app.view_functions[view] = cast("RouteCallable", browsing(app.view_functions[view]))
    app.register_blueprint(health.bp)
    return app
