"""The Celery dispatcher: publishes job-kind messages to Redis and answers queue questions.

This is the one piece of ``workers`` that web and CLI may import: they pass the result of
``dispatcher_for(settings)`` to ``services.runtime.build_runtime``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any, cast

from celery import Celery

from services.errors import BrokerUnavailable
from services.jobs.dispatch import Dispatcher
from services.jobs.kinds import JOB_KINDS, QUEUES, Kind
from services.runtime import redis_client
from services.settings import Settings

# Where kombu's Redis transport keeps delivered, unacknowledged messages.
UNACKED_KEY = "unacked"


class CeleryDispatcher:
    """Publishes each payload as a Celery task message (by task name: publishers need not
    import the task code)."""

    local = False

    def __init__(self, app: Celery, broker_url: str) -> None:
        self.app = app
        self.broker_url = broker_url

    def publish(
        self, kind: Kind, payloads: Sequence[Mapping[str, Any]], delay_s: float = 0.0
    ) -> None:
        import kombu.exceptions
        import redis

        spec = JOB_KINDS[kind]
        try:
            for payload in payloads:
                self.app.send_task(
                    spec.task_name,
                    kwargs={"payload": dict(payload)},
                    queue=spec.queue,
                    countdown=delay_s or None,
                )
        except (redis.RedisError, kombu.exceptions.OperationalError, OSError) as e:
            raise BrokerUnavailable(f"cannot publish {kind.value} work: {e}") from e

    def queue_depths(self) -> dict[str, int]:
        client = redis_client(self.broker_url)
        return {queue: int(client.llen(queue)) for queue in QUEUES}  # type: ignore[arg-type]

    def check_broker(self) -> None:
        import redis

        try:
            redis_client(self.broker_url).ping()
        except (redis.RedisError, OSError) as e:
            raise BrokerUnavailable(f"{type(e).__name__}: {e}") from e

    def workers(self, timeout_s: float = 1.0) -> list[str]:
        replies = self.app.control.ping(timeout=timeout_s)
        return sorted(name for reply in replies for name in reply)

    def in_flight(self, queue: str) -> set[tuple[str, str]]:
        """Read kombu's ``unacked`` hash: every message a worker took and has not
        acknowledged (its own, or a dead worker's awaiting redelivery)."""
        client = redis_client(self.broker_url)
        found: set[tuple[str, str]] = set()
        for raw in cast("list[bytes]", client.hvals(UNACKED_KEY)):
            try:
                message, _exchange, routing_key = json.loads(raw)
                if routing_key != queue:
                    continue
                _args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
                payload = kwargs.get("payload") or {}
                item = payload.get("item") or payload.get("url")
                if payload.get("job_id") and item:
                    found.add((str(payload["job_id"]), str(item)))
            except (ValueError, TypeError, KeyError, AttributeError):
                continue  # not one of ours, or not a task message
        return found

    def close(self) -> None:
        return None


def dispatcher_for(settings: Settings) -> Dispatcher | None:
    """The Celery dispatcher when a broker is configured, else None (in-process work)."""
    if not settings.queue.broker:
        return None
    from workers.celery_app import create_celery

    return CeleryDispatcher(create_celery(settings), settings.queue.broker)
