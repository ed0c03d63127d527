"""renderfarm.api_deps: the error answers every operation documents, and how an answer shortens what it repeats."""

from __future__ import annotations

from renderfarm.api_deps import ECHO, answers, clip, first_line


def test_each_documented_status_names_its_json_body() -> None:
    documented = answers(401, 402, 503)
    assert set(documented) == {401, 402, 503}
    assert documented[402]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/InsufficientOut"}
    assert "Retry-After" in documented[503]["headers"] and "WWW-Authenticate" in documented[401]["headers"]


def test_clip_and_first_line() -> None:
    assert clip("short") == "short"
    assert len(clip("x" * 1000)) == ECHO and clip("x" * 1000).endswith("…")
    assert first_line(RuntimeError("  one\ntwo\n")) == "one" and first_line(RuntimeError("")) == ""
