"""renderfarm.core, the API, without a server: what a job looks like to a client, and what a 422 echoes."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from renderfarm.core import MAX_TILES, JobOut, RenderRequest, field_errors
from renderfarm.examples import example_scene_path
from renderfarm.jobs import JobView


def test_job_view_round_trip_and_image_url_only_when_finished() -> None:
    h = {
        "mjid": "m1",
        "state": "queued",
        "queue": "pq",
        "quality": "hd",
        "user": "a@b.c",
        "attempts": "0",
        "created_at": "t0",
        "price": "10",
    }
    v = JobView.from_hash(h)
    out = JobOut.of(v)
    assert out.image_url is None and out.queue == "pq" and out.state == "queued" and out.price == 10
    done = JobView.from_hash({**h, "state": "finished", "image": "m1.png", "attempts": "1"})
    assert JobOut.of(done).image_url == "/renders/m1/image"


def test_validation_errors_echo_a_short_preview_and_only_scalar_limits() -> None:
    errors = [
        {"type": "too_long", "loc": ("body", "scene", "camera", "position"), "msg": "List should have at most 3",
         "input": [1.5] * 100_000, "ctx": {"field_type": "List", "max_length": 3, "actual_length": 100_000}},
        {"type": "value_error", "loc": ("body", "x" * 1000), "msg": "Value error, " + "y" * 5000,
         "input": "z" * 10_000, "ctx": {"error": ValueError("z" * 10_000)}},
        {"type": "finite_number", "loc": ("body", "energy"), "msg": "Input should be a finite number",
         "input": float("nan"), "ctx": {"le": float("inf")}},
    ]  # fmt: skip
    position, custom, nan = field_errors(errors)
    assert position["input"].startswith("[1.5, 1.5") and len(position["input"]) <= 80
    assert position["ctx"] == {"field_type": "List", "max_length": 3, "actual_length": 100_000}
    assert len(custom["loc"][1]) == 80 and custom["loc"][1].endswith("…") and len(custom["msg"]) <= 320
    assert len(custom["input"]) <= 80 and "ctx" not in custom, "an exception in ctx is not sent back"
    assert nan["input"] == "nan" and nan["ctx"] == {"le": "inf"}, "JSON has no NaN or infinity"
    many = field_errors([errors[2]] * 50)
    assert len(many) == 21 and many[-1]["msg"] == "and 30 more invalid values"


def test_tiles_are_for_hd_renders_only() -> None:
    scene = json.loads(example_scene_path().read_text())
    assert RenderRequest(quality="hd", scene=scene, tiles=4).tiles == 4  # type: ignore[arg-type]
    assert RenderRequest(quality="preview", scene=scene).tiles == 1  # type: ignore[arg-type]
    for quality, tiles, says in (("preview", 2, "tiles apply to hd renders"), ("hd", MAX_TILES + 1, "less than")):
        with pytest.raises(ValidationError, match=says):
            RenderRequest(quality=quality, scene=scene, tiles=tiles)  # type: ignore[arg-type]
