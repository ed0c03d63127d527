""" "Render this view", end to end with a real worker: the camera the 3D view looks through is the one posted; the
job goes from queued to finished through pushed updates, without a reload; its image shows, refreshes and downloads
as a PNG; and the render frames the scene as the view did (a marker lands within a few pixels of the same place)."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from renderdev.testing import WorkerProcess
from tests.page.browser import PageSession

pytestmark = pytest.mark.integration

PREVIEW = (640, 360)
MARKER_TOLERANCE = 4.0  # pixels of the 640x360 preview
GREEN = 1.1  # a marker pixel's green is over 1.1 times its red and blue (nothing else in the scene is green)
MARKER = [0.55, 0.9, 1.15]  # a green ball, off the view's centre (the orbit's target), where framing errors show
MARKER_SCENE = {
    "room": {
        "width": 8.0,
        "depth": 7.0,
        "wall_height": 2.6,
        "floor_colour": "#8f6242",
        "wall_colour": "#dcd5c8",
        "walls": ["back", "left", "right"],
    },
    "objects": [
        {"kind": "box", "name": "table", "position": [0.0, 0.5, 0.375], "size": [1.2, 0.8, 0.75], "colour": "#a0703c"},
        {
            "kind": "cylinder",
            "name": "vase",
            "position": [-0.3, 0.4, 0.9],
            "size": [0.2, 0.2, 0.3],
            "colour": "#3f5e7a",
        },
        {
            "kind": "box",
            "name": "shelf",
            "position": [-3.0, 3.0, 1.0],
            "size": [0.8, 0.4, 2.0],
            "rotation": [0, 0, 20],
            "colour": "#6b4a2f",
        },
        {
            "kind": "sphere",
            "name": "marker",
            "position": MARKER,
            "size": [0.16, 0.16, 0.16],
            "colour": "#00ff00",
            "emission": 0.6,
        },
    ],
    "camera": {"position": [2.4, -2.6, 1.7], "target": [0.0, 0.5, 0.8], "lens": 28.0},
    "lights": [
        {"kind": "sun", "position": [3.0, -3.0, 5.0], "target": [0.0, 0.0, 0.0], "energy": 3.0},
        {"kind": "point", "position": [0.0, 0.0, 2.3], "energy": 200.0},
    ],
    "world": {"colour": "#c4d3e6", "strength": 0.5},
}


@pytest.mark.renderdev_worker(queues="pq,sq", RENDERFARM_PREVIEW_SAMPLES="4")
def test_render_this_view_renders_what_the_view_shows(
    render_worker: WorkerProcess, open_page: Callable[..., PageSession], tmp_path: Path
) -> None:
    tab = open_page()
    tab.sign_in()
    tab.set_scene(json.dumps(MARKER_SCENE, indent=2))
    tab.settle()
    tab.drag(-25, 10)  # a view chosen in the page: turned about the table and looking down more
    eye = tab.eye()
    assert eye != pytest.approx(MARKER_SCENE["camera"]["position"], abs=0.05)  # type: ignore[index]
    shot = tab.canvas_png()
    tab.watch_jobs()

    with tab.page.expect_request(lambda r: r.url.endswith("/renders") and r.method == "POST") as posted:
        tab.page.click("#render-preview")
    camera = posted.value.post_data_json["scene"]["camera"]
    assert camera["position"] == pytest.approx(list(eye), abs=2e-3)  # the eye it looked through ...
    assert camera["target"] == pytest.approx([0.0, 0.5, 0.8], abs=2e-3)  # ... at the orbit's centre
    assert camera["lens"] == 28.0
    mjid = tab.newest_job()
    tab.wait_state(mjid, "finished", timeout=120)

    # queued -> started (by the worker) -> finished, the last two pushed; one page load, no polling.
    states = []
    for s in tab.job_states():  # each state as it first appeared (a list read may repeat one)
        if s["mjid"] == mjid and (not states or states[-1]["state"] != s["state"]):
            states.append(s)
    assert [s["state"] for s in states] == ["queued", "started", "finished"], states
    assert [s["source"] for s in states[1:]] == ["push", "push"], states
    assert states[1]["status"].startswith("started on pq by "), states
    assert tab.navigations == 1

    # The image shows beside the view; "Refresh" fetches it again; "Download" saves the PNG.
    tab.page.wait_for_selector(f'#image[data-mjid="{mjid}"]')
    assert tab.page.evaluate("document.getElementById('image').naturalWidth") == PREVIEW[0]
    fetches = sum(u.endswith(f"/renders/{mjid}/image") for u in tab.requests)
    with tab.page.expect_response(lambda r: r.url.endswith(f"/renders/{mjid}/image")) as again:
        tab.page.click("#refresh")
    assert again.value.status == 200
    assert sum(u.endswith(f"/renders/{mjid}/image") for u in tab.requests) == fetches + 1
    with tab.page.expect_download() as download:
        tab.page.click("#download")
    assert download.value.suggested_filename == f"render-{mjid}.png"
    png = Path(download.value.path()).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == PREVIEW

    # Same framing: the marker is where the view showed it.
    (tmp_path / "view.png").write_bytes(shot)  # kept for a look when this fails
    (tmp_path / "render.png").write_bytes(png)
    seen = tab.image_stats(shot, *PREVIEW, marker=GREEN)["marker"]
    rendered = tab.image_stats(png, *PREVIEW, marker=GREEN)["marker"]
    assert seen and rendered, (seen, rendered, tmp_path)
    assert seen["pixels"] > 20 and rendered["pixels"] > 20, (seen, rendered)
    off = ((seen["x"] - rendered["x"]) ** 2 + (seen["y"] - rendered["y"]) ** 2) ** 0.5
    print(f"marker: view {seen}, render {rendered}, {off:.2f} px apart")
    assert off <= MARKER_TOLERANCE, (seen, rendered, tmp_path)
    assert tab.page.inner_text("#balance") == "Balance: 100 credits"  # a preview is free
