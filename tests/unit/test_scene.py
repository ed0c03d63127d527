"""The JSON scene schema: the shipped example is valid; every bad value is refused with its field path."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from renderfarm.examples import example_scene_path, load_example_scene
from renderfarm.scene import MAX_LIGHTS, MAX_OBJECTS, Scene, parse_scene


@pytest.fixture
def example() -> dict[str, Any]:
    return json.loads(example_scene_path().read_text(encoding="utf-8"))


def test_example_scene_is_valid_and_furnished() -> None:
    scene = load_example_scene()
    assert isinstance(scene, Scene)
    kinds = {obj.kind for obj in scene.objects}
    assert kinds == {"box", "sphere", "cylinder"}
    assert len(scene.objects) >= 20
    assert {light.kind for light in scene.lights} == {"point", "sun", "area"}
    assert scene.camera.target != scene.camera.position
    assert example_scene_path().parent.name == "examples"


def test_dump_and_parse_round_trip(example: dict[str, Any]) -> None:
    scene = parse_scene(example)
    again = parse_scene(json.loads(scene.model_dump_json()))
    assert again == scene


def test_defaults_are_filled_in(example: dict[str, Any]) -> None:
    example["objects"] = [{"kind": "box", "position": [0, 0, 0.5], "size": [1, 1, 1], "colour": "#808080"}]
    example["lights"] = [{"kind": "point", "position": [0, 0, 2], "energy": 100}]
    del example["room"]["walls"]
    del example["world"]
    dumped = parse_scene(example).model_dump(mode="json")
    assert dumped["objects"][0]["rotation"] == [0.0, 0.0, 0.0]
    assert dumped["objects"][0]["roughness"] == 0.5
    assert dumped["lights"][0]["colour"] == "#ffffff"
    assert dumped["room"]["walls"] == ["back", "left"]
    assert dumped["world"]["strength"] == 0.3
    assert dumped["version"] == 1


def test_camera_target_equal_to_position_is_valid_here(example: dict[str, Any]) -> None:
    """Blender refuses it (a render failure, tested with the real Blender), the schema does not."""
    example["camera"]["target"] = list(example["camera"]["position"])
    assert parse_scene(example).camera.target == example["camera"]["position"]


def _set(path: tuple[str | int, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(scene: dict[str, Any]) -> None:
        node: Any = scene
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return apply


def _delete(path: tuple[str | int, ...]) -> Callable[[dict[str, Any]], None]:
    def apply(scene: dict[str, Any]) -> None:
        node: Any = scene
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return apply


def _many(key: str, count: int) -> Callable[[dict[str, Any]], None]:
    def apply(scene: dict[str, Any]) -> None:
        scene[key] = [copy.deepcopy(scene[key][0]) for _ in range(count)]

    return apply


INVALID = [
    # (id, change, location of the error, error type)
    ("unknown top-level field", _set(("furniture",), []), ("furniture",), "extra_forbidden"),
    ("unknown object field", _set(("objects", 0, "material"), "wood"), ("objects", 0, "material"), "extra_forbidden"),
    ("unknown camera field", _set(("camera", "fov"), 60), ("camera", "fov"), "extra_forbidden"),
    ("negative size", _set(("objects", 2, "size", 1), -0.5), ("objects", 2, "size", 1), "greater_than"),
    ("zero size", _set(("objects", 0, "size", 0), 0), ("objects", 0, "size", 0), "greater_than"),
    ("size over 100 m", _set(("objects", 0, "size", 2), 100.5), ("objects", 0, "size", 2), "less_than_equal"),
    ("negative room width", _set(("room", "width"), -6), ("room", "width"), "greater_than"),
    ("colour name", _set(("objects", 1, "colour"), "red"), ("objects", 1, "colour"), "string_pattern_mismatch"),
    ("short hex colour", _set(("room", "floor_colour"), "#fff"), ("room", "floor_colour"), "string_pattern_mismatch"),
    ("non-hex colour", _set(("lights", 0, "colour"), "#gg0000"), ("lights", 0, "colour"), "string_pattern_mismatch"),
    ("colour as floats", _set(("room", "wall_colour"), [1, 0, 0]), ("room", "wall_colour"), "string_type"),
    ("too many objects", _many("objects", MAX_OBJECTS + 1), ("objects",), "too_long"),
    ("too many lights", _many("lights", MAX_LIGHTS + 1), ("lights",), "too_long"),
    ("NaN coordinate", _set(("objects", 3, "position", 0), math.nan), ("objects", 3, "position", 0), "finite_number"),
    ("infinite energy", _set(("lights", 1, "energy"), math.inf), ("lights", 1, "energy"), "finite_number"),
    ("NaN lens", _set(("camera", "lens"), math.nan), ("camera", "lens"), "finite_number"),
    ("unknown object kind", _set(("objects", 0, "kind"), "cone"), ("objects", 0, "kind"), "literal_error"),
    ("unknown light kind", _set(("lights", 0, "kind"), "spot"), ("lights", 0, "kind"), "literal_error"),
    ("lens too short", _set(("camera", "lens"), 7.9), ("camera", "lens"), "greater_than_equal"),
    ("lens too long", _set(("camera", "lens"), 301), ("camera", "lens"), "less_than_equal"),
    ("number as string", _set(("camera", "lens"), "35"), ("camera", "lens"), "float_type"),
    ("number as bool", _set(("room", "depth"), True), ("room", "depth"), "float_type"),
    ("position of two numbers", _set(("camera", "position"), [1, 2]), ("camera", "position"), "too_short"),
    ("far away position", _set(("camera", "target", 2), 501), ("camera", "target", 2), "less_than_equal"),
    ("rotation over 360", _set(("objects", 0, "rotation", 2), 400), ("objects", 0, "rotation", 2), "less_than_equal"),
    ("roughness over 1", _set(("objects", 0, "roughness"), 1.5), ("objects", 0, "roughness"), "less_than_equal"),
    ("negative energy", _set(("lights", 0, "energy"), -1), ("lights", 0, "energy"), "greater_than_equal"),
    ("wall twice", _set(("room", "walls"), ["back", "back"]), ("room", "walls"), "value_error"),
    ("unknown wall", _set(("room", "walls"), ["ceiling"]), ("room", "walls", 0), "literal_error"),
    ("newer format", _set(("version",), 2), ("version",), "literal_error"),
    ("no camera", _delete(("camera",)), ("camera",), "missing"),
    ("object without colour", _delete(("objects", 0, "colour")), ("objects", 0, "colour"), "missing"),
]


@pytest.mark.parametrize(("change", "loc", "kind"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
def test_invalid_scene_names_the_field(
    example: dict[str, Any], change: Callable[[dict[str, Any]], None], loc: tuple[str | int, ...], kind: str
) -> None:
    change(example)
    with pytest.raises(ValidationError) as info:
        parse_scene(example)
    errors = info.value.errors()
    assert [(e["loc"], e["type"]) for e in errors] == [(loc, kind)], errors
    # The text the API shows in its 422 carries the dotted path too.
    assert ".".join(str(part) for part in loc) in str(info.value)


def test_not_an_object_at_all() -> None:
    with pytest.raises(ValidationError) as info:
        parse_scene(["not", "a", "scene"])
    assert info.value.errors()[0]["type"] == "model_type"
