"""The render job's old import path, kept so that nothing queued is lost across an upgrade.

Jobs enqueued before the worker got its own package (renderfarm/worker/) name their function
`renderfarm.work.render_job`; Redis keeps them (appendfsync always, snapshots), and an rq worker imports
that name when it picks one up. New jobs name renderfarm.jobs.RENDER_FUNC (`renderfarm.worker.job.render_job`).
"""

from renderfarm.worker.job import render_job

__all__ = ["render_job"]
