"""Real servers for tests: redis-server on a free port, Celery workers as subprocesses."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.05
) -> None:
    """Poll until ``predicate`` holds, or fail the test naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


class RedisServer:
    """A throwaway redis-server bound to loopback; ``persistent`` keeps an append-only
    file fsynced on every write, so a restart (an outage) loses nothing, as production's."""

    def __init__(self, workdir: Path, persistent: bool = False) -> None:
        self.persistent = persistent
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (scripts/test.sh installs it)")
        self.binary = binary
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port)

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.persistent else "no",
                "--appendfsync",
                "always",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._pings, 10, f"redis-server on port {self.port}")

    def _pings(self) -> bool:
        try:
            with self.client() as client:  # closed: an open socket left to the GC warns
                return bool(client.ping())
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def blip(self, seconds: float) -> None:
        """An outage: the server goes away for ``seconds`` and comes back on its port."""
        self.stop()
        time.sleep(seconds)
        self.start()


class WorkerProcess:
    """``sightline worker`` in a subprocess, logging to a file."""

    def __init__(self, env: dict[str, str], log: Path, queues: str = "ingest,jobs") -> None:
        self.env = env
        self.log = log
        self.queues = queues
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, **extra_env: str) -> WorkerProcess:
        env = {**self.env, **extra_env}
        offset = self.log.stat().st_size if self.log.exists() else 0
        self._log_file = self.log.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli.main",
                "worker",
                "--pool",
                "solo",
                "--queues",
                self.queues,
                "--loglevel",
                "info",
            ],
            env=env,
            cwd=ROOT,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(lambda: self._ready(offset), 120, "the Celery worker to be ready", interval_s=0.2)
        return self

    def _ready(self, offset: int) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"worker exited early:\n{self.log.read_text()[-3000:]}")
        return " ready." in self.log.read_bytes()[offset:].decode(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no chance to acknowledge or clean up."""
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
            self.proc = None
            self._log_file.close()

    def stop(self) -> None:
        """Warm shutdown, then release the embedded index for the test to read."""
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
                return
            self.proc = None
            self._log_file.close()
