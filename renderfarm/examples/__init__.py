"""Example scenes shipped as package data; `furnished_room.json` is what `invoke render` uses by default."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from renderfarm.scene import Scene, parse_scene

EXAMPLE_SCENE = "furnished_room.json"


def example_scene_path(name: str = EXAMPLE_SCENE) -> Path:
    """The path of a shipped example scene (the package is installed from a folder, so this is a real file)."""
    path = Path(str(resources.files(__name__).joinpath(name)))
    if not path.is_file():
        raise FileNotFoundError(f"no example scene {name!r} in {path.parent}")
    return path


def load_example_scene(name: str = EXAMPLE_SCENE) -> Scene:
    """The example scene, validated."""
    return parse_scene(json.loads(example_scene_path(name).read_text(encoding="utf-8")))
