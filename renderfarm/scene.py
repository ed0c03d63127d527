"""The JSON scene a client sends: a room, objects, a camera and lights (pydantic v2, strict).

Conventions (the Blender script `blender_scene.py` follows them):
- Metres, Z up. The floor is centred on the origin at z = 0: x spans the width, y the depth.
  The back wall stands at y = +depth/2, the left wall at x = -width/2, the right wall at x = +width/2,
  the front wall at y = -depth/2.
- An object's `position` is the centre of its bounding box and `size` its full extent [x, y, z] before
  rotation: a sphere of size [1, 1, 1] has radius 0.5, a cylinder of size [0.4, 0.4, 1] is 1 m tall
  along z with radius 0.2. Unequal sizes stretch the shape (ellipsoids, elliptic cylinders).
- `rotation` is an XYZ Euler angle in degrees.
- Colours are "#rrggbb" (sRGB, as in CSS).
- `emission` makes an object glow, but it is not sampled as a light source (Blender 3.4 samples emissive
  meshes non-deterministically, and the same scene and seed must give the same image): light the room
  with `lights`.
- Lights: `energy` is watts for point and area lights and W/m² (strength) for the sun. Sun and area
  lights shine from `position` towards `target`; the sun's position only sets its direction.

Validation is strict: no unknown fields, no strings for numbers, no NaN or infinity, every number bounded.
The camera's target may equal its position here; Blender then refuses the scene (a render failure, not a 422).
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCENE_VERSION: Final = 1
MAX_OBJECTS = 200
MAX_LIGHTS = 16
MAX_COORD = 500.0  # metres from the origin, on each axis
MAX_SIZE = 100.0  # metres

Coord = Annotated[float, Field(ge=-MAX_COORD, le=MAX_COORD, allow_inf_nan=False)]
Extent = Annotated[float, Field(gt=0.0, le=MAX_SIZE, allow_inf_nan=False)]
Degrees = Annotated[float, Field(ge=-360.0, le=360.0, allow_inf_nan=False)]
Unit = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Colour = Annotated[str, Field(pattern=r"^#[0-9a-fA-F]{6}$", description='sRGB colour as "#rrggbb"')]

Vec3 = Annotated[list[Coord], Field(min_length=3, max_length=3, description="[x, y, z] in metres")]
Size3 = Annotated[list[Extent], Field(min_length=3, max_length=3, description="[x, y, z] extent in metres")]
Rotation3 = Annotated[list[Degrees], Field(min_length=3, max_length=3, description="XYZ Euler angles in degrees")]

WallName = Literal["back", "left", "right", "front"]


def _default_walls() -> list[WallName]:
    return ["back", "left"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Room(_Model):
    width: Extent = Field(description="floor extent along x, metres")
    depth: Extent = Field(description="floor extent along y, metres")
    wall_height: Extent
    floor_colour: Colour
    wall_colour: Colour
    walls: list[WallName] = Field(default_factory=_default_walls, max_length=4)

    @field_validator("walls")
    @classmethod
    def _walls_once(cls, walls: list[WallName]) -> list[WallName]:
        if len(set(walls)) != len(walls):
            raise ValueError(f"each wall may appear once, got {walls}")
        return walls


class SceneObject(_Model):
    kind: Literal["box", "sphere", "cylinder"]
    name: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_. -]+$")
    position: Vec3
    size: Size3
    rotation: Rotation3 = Field(default_factory=lambda: [0.0, 0.0, 0.0])
    colour: Colour
    roughness: Unit = 0.5
    metallic: Unit = 0.0
    emission: Annotated[float, Field(ge=0.0, le=100.0, allow_inf_nan=False)] = Field(
        default=0.0,
        description="glow of the object's own colour (0: none); it hardly lights the room: add a light for that",
    )


class Camera(_Model):
    position: Vec3
    target: Vec3
    lens: Annotated[float, Field(ge=8.0, le=300.0, allow_inf_nan=False)] = Field(
        default=35.0, description="focal length in mm (36 mm sensor)"
    )


class Light(_Model):
    kind: Literal["point", "sun", "area"]
    position: Vec3
    target: Vec3 = Field(default_factory=lambda: [0.0, 0.0, 0.0], description="where sun and area lights point")
    energy: Annotated[float, Field(ge=0.0, le=100_000.0, allow_inf_nan=False)]
    colour: Colour = "#ffffff"
    size: Annotated[float, Field(gt=0.0, le=50.0, allow_inf_nan=False)] = Field(
        default=0.5, description="radius (point), side (area) in metres; unused for the sun"
    )


class World(_Model):
    colour: Colour = "#20242c"
    strength: Annotated[float, Field(ge=0.0, le=10.0, allow_inf_nan=False)] = 0.3


class Scene(_Model):
    version: Literal[1] = SCENE_VERSION
    room: Room
    objects: list[SceneObject] = Field(default_factory=list, max_length=MAX_OBJECTS)
    camera: Camera
    lights: list[Light] = Field(default_factory=list, max_length=MAX_LIGHTS)
    world: World = Field(default_factory=World)


def parse_scene(data: Any) -> Scene:
    """Validate a decoded JSON scene; raises pydantic.ValidationError whose errors name the field path."""
    return Scene.model_validate(data)
