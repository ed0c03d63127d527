# mypy: ignore-errors
"""Build a renderfarm scene in Blender and render it to a PNG. Runs INSIDE Blender, never imported on the host.

    blender -b --factory-startup -noaudio --python-exit-code 1 --python blender_scene.py -- \\
        --scene SCENE.json --out OUT.png --width W --height H --samples N --seed S

Only the standard library, `bpy` and `mathutils` are available here (Blender's own Python: no pydantic).
The scene JSON was validated on the host by `renderfarm.scene` and dumped with every default filled in
(`Scene.model_dump(mode="json")`), so this script reads keys directly; the conventions (units, axes, what
`size` means) are documented in `renderfarm/scene.py`.

On any failure the script prints one line `renderfarm-scene: error: <message>` and re-raises, so Blender
(run with `--python-exit-code 1`) exits 1 and the host puts that line at the top of its error.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import bpy
from mathutils import Matrix, Vector

ERROR_PREFIX = "renderfarm-scene: error: "
SCENE_VERSION = 1
WALL_THICKNESS = 0.1
FLOOR_THICKNESS = 0.1


class SceneError(Exception):
    """The scene cannot be built (e.g. the camera looks at its own position)."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    args = argv[argv.index("--") + 1 :] if "--" in argv else []
    p = argparse.ArgumentParser(prog="blender_scene.py", description="Render a renderfarm JSON scene.")
    p.add_argument("--scene", required=True, type=Path, help="scene JSON, already validated on the host")
    p.add_argument("--out", required=True, type=Path, help="PNG to write (exactly this path)")
    p.add_argument("--width", required=True, type=int)
    p.add_argument("--height", required=True, type=int)
    p.add_argument("--samples", required=True, type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rows", type=int, nargs=2, metavar=("FIRST", "END"), help="render only rows [FIRST, END)")
    return p.parse_args(args)


def linear_rgba(hex_colour: str) -> tuple[float, float, float, float]:
    """'#rrggbb' (sRGB) -> scene-linear RGBA, as Blender's colour sockets expect."""

    def channel(i: int) -> float:
        c = int(hex_colour[i : i + 2], 16) / 255.0
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    return (channel(1), channel(3), channel(5), 1.0)


def clear_scene() -> bpy.types.Scene:
    """Start from nothing: no default cube, camera, light, materials or world."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return bpy.context.scene


def make_material(name: str, colour: str, roughness: float, metallic: float, emission: float) -> bpy.types.Material:
    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    bsdf = mat.node_tree.nodes["Principled BSDF"]
    rgba = linear_rgba(colour)
    bsdf.inputs["Base Color"].default_value = rgba
    bsdf.inputs["Roughness"].default_value = roughness
    bsdf.inputs["Metallic"].default_value = metallic
    if emission > 0:
        bsdf.inputs["Emission"].default_value = rgba
        bsdf.inputs["Emission Strength"].default_value = emission
        # Sampled as a light, an emissive mesh makes Blender 3.4's renders differ run to run with the same
        # seed; unsampled it still glows where seen (and bounces a little light). Lights light the room.
        mat.cycles.sample_as_light = False
    mat.diffuse_color = rgba  # viewport colour, handy when the .blend is opened for debugging
    return mat


def add_mesh_object(kind: str, name: str, size: list[float], position: list[float], rotation: list[float]):
    """A primitive of unit extent, scaled into its mesh (so modifiers work in metres), placed and rotated."""
    if kind == "box":
        bpy.ops.mesh.primitive_cube_add(size=1.0)
    elif kind == "sphere":
        bpy.ops.mesh.primitive_uv_sphere_add(radius=0.5, segments=48, ring_count=24)
    elif kind == "cylinder":
        bpy.ops.mesh.primitive_cylinder_add(radius=0.5, depth=1.0, vertices=48)
    else:
        raise SceneError(f"unknown object kind: {kind!r}")
    obj = bpy.context.active_object
    obj.name = name
    mesh = obj.data
    mesh.name = name
    mesh.transform(Matrix.Diagonal((size[0], size[1], size[2], 1.0)))
    obj.location = Vector(position)
    obj.rotation_mode = "XYZ"
    obj.rotation_euler = tuple(math.radians(a) for a in rotation)
    for poly in mesh.polygons:
        poly.use_smooth = kind != "box"
    if kind in ("box", "cylinder"):
        # Softly rounded edges catch the light; auto smooth keeps the flat faces flat.
        mesh.use_auto_smooth = True
        mesh.auto_smooth_angle = math.radians(35)
        bevel = obj.modifiers.new("bevel", "BEVEL")
        bevel.width = min(0.012, min(size) / 4)
        bevel.segments = 2
        bevel.limit_method = "ANGLE"
        for poly in mesh.polygons:
            poly.use_smooth = True
    return obj


def build_room(room: dict) -> None:
    mat_floor = make_material("floor", room["floor_colour"], 0.6, 0.0, 0.0)
    mat_wall = make_material("wall", room["wall_colour"], 0.9, 0.0, 0.0)
    w, d, h = room["width"], room["depth"], room["wall_height"]
    t = WALL_THICKNESS
    floor = add_mesh_object("box", "floor", [w, d, FLOOR_THICKNESS], [0.0, 0.0, -FLOOR_THICKNESS / 2], [0, 0, 0])
    floor.data.materials.append(mat_floor)
    # Walls stand on the floor's edges, outside it, and overlap at the corners.
    walls = {
        "back": ([w + 2 * t, t, h], [0.0, d / 2 + t / 2, h / 2]),
        "front": ([w + 2 * t, t, h], [0.0, -d / 2 - t / 2, h / 2]),
        "left": ([t, d + 2 * t, h], [-w / 2 - t / 2, 0.0, h / 2]),
        "right": ([t, d + 2 * t, h], [w / 2 + t / 2, 0.0, h / 2]),
    }
    for name in room["walls"]:
        size, position = walls[name]
        wall = add_mesh_object("box", f"wall_{name}", size, position, [0, 0, 0])
        wall.data.materials.append(mat_wall)


def build_objects(objects: list[dict]) -> None:
    for i, spec in enumerate(objects):
        name = spec.get("name") or f"{spec['kind']}_{i}"
        obj = add_mesh_object(spec["kind"], name, spec["size"], spec["position"], spec["rotation"])
        mat = make_material(name, spec["colour"], spec["roughness"], spec["metallic"], spec["emission"])
        obj.data.materials.append(mat)


def look_at(obj: bpy.types.Object, position: list[float], target: list[float]) -> bool:
    """Point obj's -Z axis at target with +Y up; False (and no rotation) when target == position."""
    direction = Vector(target) - Vector(position)
    if direction.length < 1e-6:
        return False
    obj.rotation_mode = "XYZ"
    obj.rotation_euler = direction.to_track_quat("-Z", "Y").to_euler()
    return True


def build_camera(scene: bpy.types.Scene, spec: dict) -> None:
    data = bpy.data.cameras.new("camera")
    data.sensor_fit = "HORIZONTAL"
    data.sensor_width = 36.0
    data.clip_start = 0.05
    data.clip_end = 2000.0
    cam = bpy.data.objects.new("camera", data)
    scene.collection.objects.link(cam)
    place_camera(cam, spec)
    scene.camera = cam


def place_camera(cam: bpy.types.Object, spec: dict) -> None:
    """The camera's lens, position and aim: all a scene's camera spec says."""
    cam.data.lens = spec["lens"]
    cam.location = Vector(spec["position"])
    if not look_at(cam, spec["position"], spec["target"]):
        raise SceneError(f"camera target equals camera position: {spec['position']}")


def build_lights(scene: bpy.types.Scene, lights: list[dict]) -> None:
    for i, spec in enumerate(lights):
        kind = spec["kind"]
        data = bpy.data.lights.new(f"light_{i}", type=kind.upper())
        data.energy = spec["energy"]
        data.color = linear_rgba(spec["colour"])[:3]
        if kind == "point":
            data.shadow_soft_size = spec["size"]
        elif kind == "area":
            data.shape = "SQUARE"
            data.size = spec["size"]
        elif kind == "sun":
            data.angle = math.radians(3.0)
        light = bpy.data.objects.new(f"light_{i}", data)
        scene.collection.objects.link(light)
        light.location = Vector(spec["position"])
        look_at(light, spec["position"], spec["target"])  # degenerate: keeps pointing straight down


def build_world(scene: bpy.types.Scene, spec: dict) -> None:
    world = bpy.data.worlds.new("world")
    world.use_nodes = True
    background = world.node_tree.nodes["Background"]
    background.inputs["Color"].default_value = linear_rgba(spec["colour"])
    background.inputs["Strength"].default_value = spec["strength"]
    scene.world = world


def configure_render(
    scene: bpy.types.Scene, out: Path, width: int, height: int, samples: int, seed: int, rows=None
) -> None:
    """Cycles on the CPU at this size, samples and seed, writing `out`. `rows` (first, end), counted from the top:
    only that band is rendered (border render) and the image is cropped to it: width x (end - first) pixels."""
    scene.render.engine = "CYCLES"
    cycles = scene.cycles
    cycles.device = "CPU"
    cycles.samples = samples
    cycles.seed = seed
    cycles.use_animated_seed = False
    # Debian's Blender has no OpenImageDenoise: with denoising on, Cycles fails the render.
    cycles.use_denoising = False
    cycles.use_preview_denoising = False
    for layer in scene.view_layers:
        layer.cycles.use_denoising = False
    render = scene.render
    render.resolution_x = width
    render.resolution_y = height
    render.resolution_percentage = 100
    render.pixel_aspect_x = render.pixel_aspect_y = 1.0
    render.film_transparent = False
    render.use_border = rows is not None
    render.use_crop_to_border = rows is not None
    if rows is not None:
        # Blender's border is in fractions of the image, y from the bottom; whole rows divided by the height give
        # back exactly those rows (Blender rounds fraction * height to the nearest pixel).
        render.border_min_x, render.border_max_x = 0.0, 1.0
        render.border_min_y = (height - rows[1]) / height
        render.border_max_y = (height - rows[0]) / height
    render.threads_mode = "AUTO"
    # No dither on the way to 8 bits: Blender's dither noise depends on where a pixel lies in the buffer rendered,
    # so a tile would differ from the same rows of the full image by a level or two in a third of its bytes.
    render.dither_intensity = 0.0
    # Nothing time- or host-dependent in the file: the same scene and seed give the same bytes.
    render.use_stamp = False
    for attr in dir(render):
        if attr.startswith("use_stamp_") and isinstance(getattr(render, attr), bool):
            setattr(render, attr, False)
    settings = render.image_settings
    settings.file_format = "PNG"
    settings.color_mode = "RGB"
    settings.color_depth = "8"
    settings.compression = 15
    render.use_file_extension = False
    render.filepath = str(out)
    scene.view_settings.view_transform = "Filmic"
    scene.view_settings.look = "Medium High Contrast"
    scene.view_settings.exposure = 0.0
    scene.view_settings.gamma = 1.0


# In a warm Blender (blender_server.py, keep=True): the last scene built and rendered, without its camera. A job
# whose scene equals it but for the camera (a user walking through their room) moves the camera and renders again:
# no factory reset, no rebuild, and with Cycles' persistent data its scene sync, BVH and shaders are kept too.
_kept: dict | None = None


def render_spec(
    spec: dict, out: Path, width: int, height: int, samples: int, seed: int, *, keep: bool = False, rows=None
) -> bool:
    """Build the scene from its JSON (already validated on the host) and render it to `out`; True when the built
    scene was kept from the last render (only the camera moved).

    Starts from factory settings every time unless `keep` finds the same scene built, so a warm Blender that renders
    job after job gives the same pixels as a fresh one (a kept scene differs from a fresh one in nothing)."""
    global _kept
    if width < 1 or height < 1 or samples < 1:
        raise SceneError(f"width, height and samples must be positive: {width}x{height} {samples}")
    if spec.get("version") != SCENE_VERSION:
        raise SceneError(f"scene version {spec.get('version')!r} is not {SCENE_VERSION}: update renderfarm")
    rest = {k: v for k, v in spec.items() if k != "camera"}
    scene = bpy.context.scene
    kept = keep and _kept is not None and _kept == rest and scene.camera is not None
    _kept = None  # until this render has succeeded: a failure leaves nothing to keep
    if kept:
        place_camera(scene.camera, spec["camera"])
    else:
        scene = clear_scene()
        build_room(spec["room"])
        build_objects(spec["objects"])
        build_camera(scene, spec["camera"])
        build_lights(scene, spec["lights"])
        build_world(scene, spec["world"])
    if rows is not None and not 0 <= rows[0] < rows[1] <= height:
        raise SceneError(f"rows {rows} are not a band of an image {height} rows high")
    configure_render(scene, out.resolve(), width, height, samples, seed, rows)
    scene.render.use_persistent_data = keep
    bpy.ops.render.render(write_still=True)
    if not out.is_file():
        raise SceneError(f"blender finished but wrote no image at {out}")
    if keep:
        _kept = rest
    return kept


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    spec = json.loads(args.scene.read_text(encoding="utf-8"))
    render_spec(spec, args.out, args.width, args.height, args.samples, args.seed, rows=args.rows)
    print(f"renderfarm-scene: wrote {args.out} ({args.width}x{args.height}, {args.samples} samples, seed {args.seed})")


if __name__ == "__main__":
    try:
        main(sys.argv)
    except Exception as exc:
        sys.stdout.flush()
        print(f"{ERROR_PREFIX}{exc}", file=sys.stderr, flush=True)
        raise
