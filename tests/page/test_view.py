"""The room in 3D: drawn, turned by dragging, walked through at eye height without leaving the room; and the page
laid out for a desktop and a phone, usable from the keyboard."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.page.browser import DESKTOP, PHONE, PageSession

pytestmark = pytest.mark.integration

EYE_HEIGHT = 1.6
WALL_MARGIN = 0.3  # how close to a wall (or the floor's edge) the eye may come


def test_the_room_is_drawn_and_dragging_turns_it(open_page: Callable[..., PageSession]) -> None:
    tab = open_page()
    tab.sign_in()
    before = tab.canvas_png()
    stats = tab.image_stats(before, 320, 180)
    assert stats["colours"] > 200, stats  # a furnished room, not a cleared canvas (one colour)
    assert tab.eye() == pytest.approx((2.6, -3.3, 1.75), abs=1e-3)  # the example's camera

    tab.drag(60, 0)
    after = tab.canvas_png()
    assert tab.difference(before, after) > 0.2  # a fifth of the picture changed, at least
    assert tab.eye() != pytest.approx((2.6, -3.3, 1.75), abs=0.05)
    x, y, z = tab.eye()
    assert z == pytest.approx(1.75, abs=0.5)  # a horizontal drag turns about the vertical (Blender's Z) axis


# A closed 3 m x 3 m room; the camera stands 1 m in front of the middle and looks straight at the back wall.
CLOSED_ROOM = {
    "room": {
        "width": 3.0,
        "depth": 3.0,
        "wall_height": 2.5,
        "floor_colour": "#8f6242",
        "wall_colour": "#dcd5c8",
        "walls": ["back", "left", "right", "front"],
    },
    "objects": [
        {"kind": "box", "name": "crate", "position": [1.0, 1.0, 0.3], "size": [0.6, 0.6, 0.6], "colour": "#3f5e7a"}
    ],
    "camera": {"position": [0.0, -1.0, 1.6], "target": [0.0, 1.0, 1.6], "lens": 24.0},
    "lights": [{"kind": "point", "position": [0.0, 0.0, 2.2], "energy": 300.0}],
}


def test_walk_mode_moves_the_eye_at_eye_height_and_stops_at_a_wall(open_page: Callable[..., PageSession]) -> None:
    half_depth = CLOSED_ROOM["room"]["depth"] / 2  # type: ignore[index]
    tab = open_page()
    tab.sign_in()
    tab.set_scene(json.dumps(CLOSED_ROOM))
    tab.page.click("#mode-walk")
    assert tab.page.get_attribute("#mode-walk", "aria-pressed") == "true"
    tab.settle()
    assert tab.eye() == pytest.approx((0.0, -1.0, EYE_HEIGHT), abs=1e-3)
    tab.page.locator("#view").focus()
    # Pointer lock is refused under automation: the keys walk (W A S D) and look (the arrows).
    tab.page.keyboard.down("KeyW")
    time.sleep(0.8)
    tab.page.keyboard.up("KeyW")
    tab.settle()
    x, y, z = tab.eye()
    assert y > -1.0 + 0.4, y  # 1.4 m/s for 0.8 s, less what a slow frame rate drops
    assert (x, z) == pytest.approx((0.0, EYE_HEIGHT), abs=1e-3)  # straight ahead, at eye height

    # On for longer than the room is deep: the eye stops in front of the back wall and stays there.
    tab.page.keyboard.down("KeyW")
    time.sleep(2.5)
    stopped = tab.eye()
    time.sleep(0.7)
    still = tab.eye()
    tab.page.keyboard.up("KeyW")
    assert still == pytest.approx(stopped, abs=1e-3)
    assert still == pytest.approx((0.0, half_depth - WALL_MARGIN, EYE_HEIGHT), abs=1e-3)

    # Turning round with the arrow keys and walking on leaves the wall.
    tab.page.keyboard.down("ArrowLeft")
    time.sleep(2.1)  # 1.5 rad/s: about half a turn
    tab.page.keyboard.up("ArrowLeft")
    tab.page.keyboard.down("KeyW")
    time.sleep(0.8)
    tab.page.keyboard.up("KeyW")
    tab.settle()
    back = tab.eye()
    assert back[1] < still[1] - 0.3, (still, back)
    assert back[2] == pytest.approx(EYE_HEIGHT)


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["1280x800", "390x844"])
def test_the_page_fits_the_screen_and_works_from_the_keyboard(
    open_page: Callable[..., PageSession], viewport: dict[str, int], tmp_path: Path
) -> None:
    tab = open_page(viewport=viewport)
    page = tab.page
    # Sign in with the keyboard alone: Tab to the fields, type, Enter.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "email"
    page.keyboard.type(tab.user.email)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "token"
    page.keyboard.type(tab.user.token)
    page.keyboard.press("Enter")
    tab.wait_drawn()
    page.wait_for_selector("#connection[data-state=live]")
    tab.settle()

    # Nothing sticks out sideways; the 3D view and the image take the width they are given, at 16:9.
    assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
    view = page.locator("#view").bounding_box()
    frame = page.locator("#image-panel .frame").bounding_box()
    assert view is not None and frame is not None
    assert view["width"] >= (300 if viewport is PHONE else 500)
    assert view["width"] / view["height"] == pytest.approx(16 / 9, rel=0.02)
    if viewport is DESKTOP:  # the finished image beside the 3D view
        assert frame["x"] > view["x"] + view["width"] and abs(frame["y"] - view["y"]) < 60
    else:  # under it
        assert frame["y"] > view["y"] + view["height"]

    # Every button says what it does (its text, or a label), and can be reached with Tab.
    names = page.eval_on_selector_all(
        "button",
        "els => els.filter(e => e.offsetParent).map(e => (e.getAttribute('aria-label') || e.textContent).trim())",
    )
    assert names and all(names), names
    reached = set()
    for _ in range(40):
        page.keyboard.press("Tab")
        reached.add(page.evaluate("document.activeElement.id || document.activeElement.tagName"))
        if {"view", "mode-walk", "render-preview", "render-hd", "scene-json", "apply-scene"} <= reached:
            break
    assert {"view", "mode-walk", "render-preview", "render-hd", "scene-json", "apply-scene"} <= reached, reached
    # A button pressed from the keyboard does its job.
    page.focus("#mode-walk")
    page.keyboard.press("Enter")
    assert page.get_attribute("#mode-walk", "aria-pressed") == "true"

    shot = tmp_path / f"page-{viewport['width']}x{viewport['height']}.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
