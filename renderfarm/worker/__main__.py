"""`python -m renderfarm.worker`: a render worker configured from its environment alone, the worker image's command
(compose/worker/Dockerfile).

Its settings are the RENDERFARM_* variables the api container gets too (renderfarm.settings.FarmSettings: where
Redis and Postgres are, the password files, the renders folder, the timings, the samples), and what it serves from
RENDERFARM_QUEUES (default pq,sq), RENDERFARM_WARM_BLENDER and RENDERFARM_WARM_MAX_JOBS (WorkerOptions). SIGTERM
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
