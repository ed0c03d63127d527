"""Signing in: with the email and API token the API's auth defines; the token kept in this tab's session storage
only, never in a URL (so never in an access log) nor in any line the API logs."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from renderdev.testing import RenderStack
from tests.page.browser import PageSession

pytestmark = pytest.mark.integration


def test_the_token_stays_in_this_tab_and_out_of_urls_and_logs(
    open_page: Callable[..., PageSession], renderdev_stack: RenderStack
) -> None:
    tab = open_page()
    page, token = tab.page, tab.user.token
    # A wrong token is refused with the API's own words, and the form stays.
    page.fill("#email", tab.user.email)
    page.fill("#token", "not-a-token")
    page.click("#sign-in button[type=submit]")
    page.locator("#sign-in-error").filter(has_text="unknown API token").wait_for()
    assert page.is_visible("#sign-in-panel") and not page.is_visible("#app")

    tab.sign_in()
    assert page.inner_text("#who") == f"Signed in as {tab.user.email}"
    assert page.inner_text("#balance") == "Balance: 100 credits"
    assert page.input_value("#token") == ""  # not left in the form
    assert page.evaluate("localStorage.length") == 0
    assert token in page.evaluate("sessionStorage.getItem('renderfarm.session')")
    # A reload of the tab keeps the session; another tab (a new browsing context) does not have it.
    page.reload()
    tab.wait_drawn()
    assert page.is_visible("#app") and not page.is_visible("#sign-in-panel")
    other = open_page(tab.user)
    assert other.page.is_visible("#sign-in-panel") and not other.page.is_visible("#app")
    # Some traffic of every kind: lists, the event stream, a post.
    page.wait_for_selector("#connection[data-state=live]")
    page.click("#render-preview")
    tab.newest_job()
    page.click("#sign-out")
    assert page.evaluate("sessionStorage.getItem('renderfarm.session')") is None
    assert page.is_visible("#sign-in-panel")

    assert tab.requests and not [u for u in tab.requests if token in u]
    assert page.url == renderdev_stack.api_url + "/"
    logged = renderdev_stack.logs("api")
    assert f"/users/{tab.user.email.replace('@', '%40')}/renders/events" in logged  # the access log is on ...
    assert token not in logged  # ... and the token is in none of its lines
