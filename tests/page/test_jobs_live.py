"""The user's jobs, live: each change the JobManager writes is pushed to the page (Server-Sent Events) within
0.2 s; a failed HD render shows its error and its refund; the HD button follows the balance, and a 402 is still
shown; a lost connection is said, polled around, and recovered.

No worker here: the tests move the jobs themselves, through the JobManager, as a worker would."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import httpx
import pytest
from docker import DockerClient
from rq import Queue

from provisioner.dockerapi import service_container
from renderdev.testing import RenderStack, TestUser
from renderfarm.credits import add_credits
from renderfarm.jobs import JobManager
from tests.page.browser import PageSession

pytestmark = pytest.mark.integration
PUSH_GOAL = 0.2  # seconds from the JobManager's write to the page


def take_off_queue(jm: JobManager, mjid: str, queue: str = "pq") -> None:
    """What a worker's dequeue does: the job is no longer waiting on its rq queue."""
    rq_job = (jm.redis.hget(f"renderfarm:mq:{mjid}", "rq_job") or mjid.encode()).decode()
    Queue(queue, connection=jm.redis).remove(rq_job)


def test_changes_are_pushed_within_0_2_s_and_a_failed_hd_render_shows_its_error_and_refund(
    open_page: Callable[..., PageSession], manager: JobManager
) -> None:
    tab = open_page()
    tab.sign_in()
    tab.watch_jobs()
    tab.page.click("#render-hd")
    mjid = tab.newest_job()
    tab.wait_state(mjid, "queued")
    tab.page.wait_for_selector("#balance:text('Balance: 90 credits')")
    lists_before = sum("/renders?" in u or u.endswith("/renders") for u in tab.requests)

    delays: list[float] = []

    def pushed(state: str, write: Callable[[], object]) -> None:
        written = time.time()
        write()
        item = tab.wait_state(mjid, state, timeout=10)
        received = int(item.get_attribute("data-received-at") or 0) / 1000
        assert item.get_attribute("data-source") == "push"
        delays.append(received - written)

    take_off_queue(manager, mjid)
    pushed("started", lambda: manager.mark_started(mjid, "worker-a", rq_job=mjid))
    assert tab.job(mjid).locator(".job-status").inner_text() == "started on pq by worker-a (attempt 1)"
    pushed("queued", lambda: manager.retry_on_standard(mjid, "preempted", attempt=1))
    assert "retried on sq after its worker was preempted on pq" in tab.job(mjid).inner_text()
    take_off_queue(manager, mjid, "sq")
    pushed("started", lambda: manager.mark_started(mjid, "worker-b", rq_job=f"{mjid}-2"))
    pushed("failed", lambda: manager.mark_failed(mjid, "blender exploded: <b>boom</b>", attempt=2))

    item = tab.job(mjid)
    assert item.locator(".job-status").inner_text() == "failed · refunded 10 credits"
    assert item.locator(".job-error").inner_text() == "blender exploded: <b>boom</b>"
    assert "attempt 1 on pq by worker-a: preempted" in item.inner_text()
    assert "attempt 2 on sq by worker-b: failed" in item.inner_text()
    tab.page.wait_for_selector("#balance:text('Balance: 100 credits')")  # the refund, pushed with the end
    # Every change came pushed: the list was not polled, the page not reloaded.
    assert sum("/renders?" in u or u.endswith("/renders") for u in tab.requests) == lists_before
    assert tab.navigations == 1
    print(f"push delays (s): {[round(d, 3) for d in delays]}")
    assert statistics.median(delays) <= PUSH_GOAL, delays
    assert max(delays) <= 5 * PUSH_GOAL, delays


def test_the_hd_button_follows_the_balance_and_a_402_is_shown_plainly(
    open_page: Callable[..., PageSession],
    new_user: Callable[..., TestUser],
    renderdev_stack: RenderStack,
    manager: JobManager,
) -> None:
    user = new_user(credits=15)
    tab = open_page(user)
    tab.sign_in()
    hd = tab.page.locator("#render-hd")
    assert hd.inner_text() == "Render this view in HD · 10 credits"
    assert hd.is_enabled()
    hd.click()
    mjid = tab.newest_job()
    tab.page.wait_for_selector("#balance:text('Balance: 5 credits')")
    assert hd.is_disabled()
    assert tab.page.inner_text("#hd-note") == "HD needs 10 credits; you have 5."

    # Credits added: the next change of a job brings the balance, and the button follows.
    add_credits(manager.sessions, user.email, 10)
    take_off_queue(manager, mjid)
    manager.mark_started(mjid, "worker-a", rq_job=mjid)
    manager.mark_failed(mjid, "stopped by the test", attempt=1)  # refunded: 5 + 10 + 10
    tab.page.wait_for_selector("#balance:text('Balance: 25 credits')")
    assert hd.is_enabled()

    # A second tab whose event stream never gets through (a proxy that holds it) knows the balance only from
    # its own requests: 20 credits spent behind its back, its HD click gets the API's 402, shown plainly.
    stale = open_page(user)
    stale.page.route("**/renders/events", lambda route: None)  # held: neither answered nor refused
    stale.sign_in(wait_live=False)
    stale.page.wait_for_selector("#balance:text('Balance: 25 credits')")
    with httpx.Client(base_url=renderdev_stack.api_url, headers=user.headers, timeout=10) as http:
        scene = http.get("/examples/furnished_room").json()
        for _ in range(2):
            assert http.post("/renders", json={"quality": "hd", "scene": scene}).status_code == 202
    tab.page.wait_for_selector("#balance:text('Balance: 5 credits')")  # the live tab heard of it
    assert hd.is_disabled()
    stale_hd = stale.page.locator("#render-hd")
    assert stale_hd.is_enabled()  # it still believes 25
    with stale.page.expect_response(lambda r: r.url.endswith("/renders") and r.request.method == "POST") as answer:
        stale_hd.click()
    assert answer.value.status == 402
    said = stale.page.locator("#render-error")
    said.filter(has_text="Not enough credits").wait_for()
    assert f"{user.email} has 5, the price is 10" in said.inner_text()
    stale.page.wait_for_selector("#balance:text('Balance: 5 credits')")
    assert stale_hd.is_disabled()


def test_a_lost_connection_is_shown_polled_around_and_recovered(
    open_page: Callable[..., PageSession],
    renderdev_stack: RenderStack,
    manager: JobManager,
    renderdev_docker: DockerClient,
) -> None:
    tab = open_page()
    tab.sign_in()
    tab.page.click("#render-preview")
    mjid = tab.newest_job()
    tab.wait_state(mjid, "queued")

    api = service_container(renderdev_docker, renderdev_stack.project, "api")
    assert api is not None
    stopping = time.monotonic()
    api.stop(timeout=20)
    stopped = time.monotonic() - stopping
    # The open event stream ends when the API is told to stop: uvicorn is not kept waiting for it.
    assert stopped < 5, f"the API took {stopped:.1f} s to stop with a page open"
    tab.page.wait_for_selector("#connection[data-state=lost]", timeout=10_000)
    assert "Connection lost" in tab.page.inner_text("#connection")
    # A change while the API is away is seen once it is back (the list is read again on reconnecting).
    take_off_queue(manager, mjid)
    manager.mark_started(mjid, "worker-a", rq_job=mjid)
    api.start()
    tab.page.wait_for_selector("#connection[data-state=live]", timeout=60_000)
    tab.wait_state(mjid, "started", timeout=10)
