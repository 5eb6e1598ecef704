"""Metrics under gunicorn with two worker processes: one scrape, answered by either
worker, reports the requests both served (Prometheus multiprocess mode)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.servers import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
HEALTHZ = re.compile(
    r'^sightline_http_requests_total\{method="GET",route="/healthz",status="200"\} (\S+)$', re.M
)


def _config(tmp_path: Path, port: int) -> Path:
    """The production config, bound to a free port; each worker gets a data directory of
    its own (an embedded index is opened by one process)."""
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(
        f"exec(open({str(ROOT / 'infra' / 'gunicorn.conf.py')!r}).read())\n"
        f"bind = '127.0.0.1:{port}'\n"
        "workers = 2\n"
        "accesslog = None\n\n\n"
        "def post_fork(server, worker):\n"
        "    import os\n\n"
        f"    os.environ['SIGHTLINE_DATA_DIR'] = os.path.join({str(tmp_path)!r}, f'w{{worker.age}}')\n"
    )
    return conf


def test_one_scrape_sums_both_gunicorn_workers(tmp_path: Path, tiny_model_dir: Path) -> None:
    port = free_port()
    metrics_dir = tmp_path / "metrics"
    env = {
        **os.environ,
        "SIGHTLINE_MODEL": str(tiny_model_dir),
        "HF_HUB_OFFLINE": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    env.pop("SIGHTLINE_PROCESSES", None)
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "-c",
            str(_config(tmp_path, port)),
            "web.wsgi:app",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            # A long timeout: a request that timed out while the workers loaded would
            # still be served (and counted) once they are up.
            try:
                return httpx.get(f"{base}/healthz", timeout=120).status_code == 200
            except httpx.ConnectError:
                return False

        wait_for(up, 120, "gunicorn workers to answer")
        served = 1

        def workers_seen() -> set[str]:
            return {p.stem.rsplit("_", 1)[-1] for p in metrics_dir.glob("counter_*.db")}

        # New connections until both workers have counted requests (each is its own
        # process, with its own file of counters).
        while len(workers_seen()) < 2 and served < 400:
            assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
            served += 1
        assert len(workers_seen()) == 2, "the requests all reached one worker"
        for _ in range(6):  # whichever worker answers the scrape reports every request
            text = httpx.get(f"{base}/metrics", timeout=5).text
            found = HEALTHZ.search(text)
            assert found is not None and float(found.group(1)) == served, text[:2000]
    finally:
        server.terminate()
        _, errors = server.communicate(timeout=30)
    assert server.returncode == 0, errors[-2000:]
