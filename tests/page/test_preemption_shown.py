"""A preempted job, as the page shows it: its pq worker gets SIGTERM mid-render (a cloud VM's shutdown, the fault
suite's case), the job is queued again on sq and the page says "retried on sq"; a standard worker then finishes it."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from renderdev.testing import RenderStack, WorkerProcess, start_worker
from tests.page.browser import PageSession

pytestmark = pytest.mark.integration


@pytest.mark.renderdev_worker(queues="pq", RENDERFARM_PREVIEW_SAMPLES="4096")  # minutes: long enough to interrupt
def test_a_preempted_job_shows_retried_on_sq_then_finishes(
    render_worker: WorkerProcess, renderdev_stack: RenderStack, open_page: Callable[..., PageSession], tmp_path: Path
) -> None:
    tab = open_page()
    tab.sign_in()
    tab.watch_jobs()
    tab.page.click("#render-preview")
    mjid = tab.newest_job()
    item = tab.wait_state(mjid, "started", timeout=60)
    assert item.locator(".job-status").inner_text().startswith("started on pq by ")

    render_worker.popen.send_signal(signal.SIGTERM)  # preempted: the worker stops Blender and hands the job back
    assert render_worker.popen.wait(30) == 0
    tab.wait_state(mjid, "queued", timeout=15)
    assert item.locator(".job-status").inner_text() == "retried on sq after its worker was preempted on pq"
    assert "attempt 1 on pq by " in item.inner_text() and ": preempted" in item.inner_text()

    standard = start_worker(
        renderdev_stack.settings, tmp_path / "sq-worker.log", queues="sq", RENDERFARM_PREVIEW_SAMPLES="2"
    )
    try:
        standard.wait_ready()
        tab.wait_state(mjid, "finished", timeout=120)
    finally:
        standard.stop()
    status = item.locator(".job-status").inner_text()
    assert status.startswith("finished in ") and status.endswith("; retried on sq after its worker was preempted on pq")
    assert "attempt 2 on sq by " in item.inner_text()
    states = [s["state"] for s in tab.job_states() if s["mjid"] == mjid and s["source"] == "push"]
    assert states[-3:] == ["queued", "started", "finished"], states  # pushed, all of it
    tab.page.wait_for_selector(f'#image[data-mjid="{mjid}"]')
