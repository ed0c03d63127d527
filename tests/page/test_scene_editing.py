"""Scenes: picked from the examples, uploaded as a file, edited in place. What the API refuses is shown next to the
editor, naming the field and what is wrong with it; what a user typed is shown as text, never run (the XSS case,
checked with the CSP switched off so that the page's own handling is what is tested)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from renderfarm.examples import example_scene_path
from tests.page.browser import PageSession

pytestmark = pytest.mark.integration

XSS = "<img src=x onerror=alert(1)>"


def test_a_scene_file_can_be_uploaded_and_an_example_picked(
    open_page: Callable[..., PageSession], tmp_path: Path
) -> None:
    tab = open_page()
    tab.sign_in()
    scene = json.loads(example_scene_path().read_text())
    scene["objects"] = scene["objects"][:5]
    scene["camera"] = {"position": [1.0, -2.0, 1.2], "target": [0.0, 1.0, 0.8], "lens": 30.0}
    upload = tmp_path / "my room.json"
    upload.write_text(json.dumps(scene))
    tab.page.set_input_files("#upload", str(upload))
    tab.page.wait_for_selector("#object-count:text('5')")
    tab.settle()
    assert tab.eye() == pytest.approx((1.0, -2.0, 1.2), abs=1e-3)  # the view is the uploaded scene's camera
    assert json.loads(tab.page.input_value("#scene-json")) == scene

    tab.page.select_option("#example", "furnished_room")
    tab.page.wait_for_selector("#object-count:text('133')")
    tab.settle()
    assert tab.eye() == pytest.approx((2.6, -3.3, 1.75), abs=1e-3)
    assert json.loads(tab.page.input_value("#scene-json")) == json.loads(example_scene_path().read_text())


def test_a_bad_scene_shows_its_field_error_next_to_the_editor(open_page: Callable[..., PageSession]) -> None:
    tab = open_page()
    tab.sign_in()
    scene = json.loads(example_scene_path().read_text())
    scene["objects"][2]["size"][0] = -1
    tab.set_scene(json.dumps(scene))
    with tab.page.expect_response(lambda r: r.url.endswith("/renders") and r.request.method == "POST") as answer:
        tab.page.click("#render-preview")
    assert answer.value.status == 422
    errors = tab.page.locator("#scene-errors")
    errors.locator("li").first.wait_for()
    text = errors.inner_text()
    assert "scene.objects[2].size[0]: Input should be greater than 0 (got -1)" in text, text
    assert "see the fields named under Scene" in tab.page.inner_text("#render-error")
    # Next to the editor: right under the JSON it is about.
    editor, shown = tab.page.locator("#scene-json").bounding_box(), errors.bounding_box()
    assert editor is not None and shown is not None
    assert 0 <= shown["y"] - (editor["y"] + editor["height"]) < 80
    assert tab.page.locator("#jobs li.job").count() == 0  # nothing was queued

    # Not JSON at all: said before anything is sent.
    tab.set_scene('{"room": ')
    assert "Not valid JSON" in errors.inner_text()


def test_what_a_user_typed_is_shown_as_text_and_runs_nothing(open_page: Callable[..., PageSession]) -> None:
    tab = open_page(bypass_csp=True)  # the page alone must keep markup inert; the CSP is a second wall
    tab.sign_in()
    scene = json.loads(example_scene_path().read_text())
    scene["objects"] = scene["objects"][:3]
    scene["objects"][0]["name"] = XSS
    tab.set_scene(json.dumps(scene))
    tab.page.click("#objects-panel summary")
    listed = tab.page.locator("#objects li").first
    assert listed.inner_text().startswith(XSS)
    with tab.page.expect_response(lambda r: r.url.endswith("/renders") and r.request.method == "POST") as answer:
        tab.page.click("#render-preview")
    assert answer.value.status == 422
    errors = tab.page.locator("#scene-errors")
    errors.locator("li").first.wait_for()
    assert f"scene.objects[0].name: String should match pattern '^[A-Za-z0-9_. -]+$' (got '{XSS}')" in (
        errors.inner_text()
    )
    tab.page.wait_for_timeout(300)  # an injected image would have failed to load by now
    images = tab.page.eval_on_selector_all("img", "els => els.map(e => e.id)")
    assert images == ["image"], images  # the page's own <img>, no other
    assert tab.page.evaluate("document.body.innerHTML.includes('<img src=x')") is False
    # The dialog an onerror=alert(1) would open is caught by the open_page fixture: none may appear.
