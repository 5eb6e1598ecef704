"""Gunicorn settings for the Sightline API: ``gunicorn -c infra/gunicorn.conf.py web.wsgi:app``.

Sizing: each worker process loads the model once (ViT-B/32: about 0.6-0.8 GB RSS, see
docs/DEPLOY.md; ~35 ms per text query on 2 CPU cores, bound by reading the weights).
Workers, not threads, give CPU parallelism for encoding, so run about one worker per 2
cores and a few threads each for I/O-bound requests (thumbnails, job status, uploads). ``preload_app`` stays off: torch
threads and open index clients do not survive ``fork`` cleanly, and the per-worker model
load happens once at start anyway.
"""

import os
import tempfile

from services.settings import load_settings

# Workers and threads are settings (SIGHTLINE_WEB__WORKERS, SIGHTLINE_WEB__THREADS), set
# explicitly, never derived from the host's CPU count: a 32-core host would otherwise
# start 16 workers with a model each. A bad value stops gunicorn here with its name.
_web = load_settings().web
bind = os.environ.get("SIGHTLINE_BIND", "0.0.0.0:8000")
workers = _web.workers
threads = _web.threads
# Each worker's model gets the cores divided by the workers (Settings.inference_threads),
# so W workers never run more inference threads than the host has cores.
os.environ.setdefault("SIGHTLINE_PROCESSES", str(workers))
worker_class = "gthread"
preload_app = False
timeout = 60
graceful_timeout = 30
keepalive = 5
max_requests = 2000  # recycle workers slowly to bound memory growth
max_requests_jitter = 200
accesslog = "-"
errorlog = "-"
# Trust X-Forwarded-Proto from the reverse proxy so HSTS is sent on TLS connections.
forwarded_allow_ips = os.environ.get("SIGHTLINE_FORWARDED_ALLOW_IPS", "127.0.0.1")
secure_scheme_headers = {"X-FORWARDED-PROTO": "https"}

# Prometheus multiprocess mode: each worker writes its counters and histograms to files
# here and /metrics, answered by any worker, sums them all. Set before the workers import
# prometheus_client (the app is loaded after fork); emptied at start, so a restart does
# not inherit the last run's counts.
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="sightline-metrics-")
metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]


def on_starting(server):  # type: ignore[no-untyped-def]
    # Only prometheus_client's own files: the directory may be one the operator chose.
    os.makedirs(metrics_dir, exist_ok=True)
    for name in os.listdir(metrics_dir):
        if name.endswith(".db"):
            os.unlink(os.path.join(metrics_dir, name))


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # its live gauges stop counting
