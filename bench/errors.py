"""The bench's root error: a RenderdevError, so `invoke bench` reports it like every other task."""

from __future__ import annotations

from provisioner.errors import RenderdevError


class BenchError(RenderdevError):
    """The bench could not measure something (its stack, a worker or a run failed)."""
