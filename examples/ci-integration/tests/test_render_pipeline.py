"""End to end through the render pipeline: a real stack, a real worker, a real Blender, the API as a user."""

import pytest

PNG = b"\x89PNG\r\n\x1a\n"
# Few samples: this checks the pipeline, not the picture (a full HD render takes a minute on 2 cores).
FAST = pytest.mark.renderdev_worker(RENDERFARM_PREVIEW_SAMPLES="2", RENDERFARM_HD_SAMPLES="1")


@FAST
def test_preview_is_free(render_worker, render_client):
    job = render_client.render("preview")
    assert job["state"] == "finished", job
    assert render_client.image(job["mjid"]).startswith(PNG)
    assert render_client.balance() == 100


@FAST
def test_hd_costs_credits(render_worker, render_client):
    job = render_client.render("hd", timeout=600)
    assert job["state"] == "finished", job
    assert render_client.image(job["mjid"]).startswith(PNG)
    assert render_client.balance() == 100 - job["price"] and job["price"] > 0
