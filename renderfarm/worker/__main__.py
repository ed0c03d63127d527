"""`python -m renderfarm.worker`: a render worker configured from its environment alone, the worker image's command
(compose/worker/Dockerfile).

Its settings are RENDERFARM_* variables (renderfarm.settings.FarmSettings). In the worker image that is a worker
file, RENDERFARM_WORKER_CONFIG (what `invoke workers` mounts as a secret: the API's URL, a worker token and a Redis
user that reaches rq's keys only), and the samples; without one, where Redis and Postgres are and their password
files, as for the api container. What it serves: RENDERFARM_QUEUES (default pq,sq), RENDERFARM_WARM_BLENDER and
RENDERFARM_WARM_MAX_JOBS (WorkerOptions). SIGTERM
(what `docker stop` and a compose scale-down send) stops Blender and puts the job in hand on sq at once, as for a
host worker (renderfarm.worker.render_worker). A setting it cannot use, or a Redis that does not answer, ends it
with exit 1 and one line naming the variable or the address.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from renderfarm.errors import RenderfarmError


def main(environ: Mapping[str, str] | None = None) -> int:
    from rq.logutils import setup_loghandlers

    from renderfarm.settings import FarmSettings, WorkerOptions
    from renderfarm.worker.render_worker import serve, worker_name
    from renderfarm.worker.warm_blender import WarmBlender

    try:
        settings = FarmSettings.from_env(environ)
        options = WorkerOptions.from_env(environ)
    except RenderfarmError as exc:
        print(f"renderfarm worker: {exc}", file=sys.stderr)
        return 1
    setup_loghandlers("INFO", name="rq.worker")
    warm = WarmBlender(settings.blender_path, max_jobs=options.warm_max_jobs) if options.warm_blender else None
    try:
        serve(settings, list(options.queues), name=worker_name(options.queues), warm_blender=warm)
    except RenderfarmError as exc:
        print(f"renderfarm worker: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
