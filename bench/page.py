"""Pair: the render page's first drawn frame of the furnished room vs a minimal three.js page drawing the same
objects with no app code. `invoke bench --only page` runs it against the bench stack; against a running stack:

    python3 -m bench.page --api-url http://127.0.0.1:8000 --email dev@example.com --token-file TOKENFILE

A: a new tab of Debian's chromium (Playwright, SwiftShader WebGL) navigates to the API's page with the user's
session already in the tab's session storage (as after a sign-in and a reload): the page checks the token, loads
the example scene from the API, builds the room and draws it. The time is the page's own User Timing mark
`renderfarm:first-frame`, from navigation start.
B: the same, for a page of a few lines served by a bare loopback HTTP server: the same vendored three.js (same
import map), the same scene JSON fetched over HTTP, every object as the same primitive with a standard material,
one light, one render, the same mark. The difference is the page's own code and the API on its path.

Goal: A/B <= 1.3 (time ratio, median of pairwise ratios).
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.harness import Goal, GoalKind, PairResult, PairSpec, run_pair
from bench.stack import BenchStack, Log
from renderfarm.examples import example_scene_path

NAME = "page"
CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--no-sandbox", "--enable-unsafe-swiftshader", "--use-angle=swiftshader"]
VIEWPORT = {"width": 1280, "height": 800}
STATIC = Path(__file__).resolve().parents[1] / "renderfarm" / "static"
MARK = "renderfarm:first-frame"
TIMEOUT_MS = 60_000

MINIMAL_HTML = """<!doctype html>
<html><head><meta charset="utf-8">
<script type="importmap">{"imports": {"three": "/vendor/three/three.module.js"}}</script>
<script type="module" src="/minimal.js"></script>
</head><body style="margin:0"><canvas id="view" style="width:596px;height:335px"></canvas></body></html>
"""

MINIMAL_JS = """import * as THREE from 'three';
const scene = await (await fetch('/scene.json')).json();
const canvas = document.getElementById('view');
const renderer = new THREE.WebGLRenderer({ canvas, antialias: true });
renderer.setSize(canvas.clientWidth, canvas.clientHeight, false);
const world = new THREE.Scene();
const root = new THREE.Group();
root.rotation.x = -Math.PI / 2;
world.add(root);
const shapes = {
  box: () => new THREE.BoxGeometry(1, 1, 1),
  sphere: () => new THREE.SphereGeometry(0.5, 48, 24),
  cylinder: () => new THREE.CylinderGeometry(0.5, 0.5, 1, 48).rotateX(Math.PI / 2),
};
for (const o of scene.objects) {
  const mesh = new THREE.Mesh(shapes[o.kind](), new THREE.MeshStandardMaterial({ color: o.colour }));
  mesh.scale.set(...o.size);
  mesh.position.set(...o.position);
  mesh.rotation.set(...(o.rotation ?? [0, 0, 0]).map(THREE.MathUtils.degToRad), 'ZYX');
  root.add(mesh);
}
root.add(new THREE.AmbientLight(0xffffff, 1));
const light = new THREE.DirectionalLight(0xffffff, 3);
light.position.set(5, -4, 6);
root.add(light);
const [x, y, z] = scene.camera.position, [tx, ty, tz] = scene.camera.target;
const camera = new THREE.PerspectiveCamera(40, canvas.clientWidth / canvas.clientHeight, 0.05, 2000);
camera.position.set(x, z, -y);
camera.lookAt(tx, tz, -ty);
requestAnimationFrame(() => {
  renderer.render(world, camera);
  performance.mark('renderfarm:first-frame');
  canvas.dataset.frames = '1';
});
"""


@contextmanager
def minimal_site(scene: dict[str, Any]) -> Iterator[str]:
    """B's page on a loopback server: its HTML and JS, the scene, and the page's vendored three.js."""
    root = Path(tempfile.mkdtemp(prefix="bench-page-"))
    try:
        (root / "index.html").write_text(MINIMAL_HTML)
        (root / "minimal.js").write_text(MINIMAL_JS)
        (root / "scene.json").write_text(json.dumps(scene))
        shutil.copytree(STATIC / "vendor", root / "vendor")
        handler = functools.partial(_QuietHandler, directory=str(root))
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


class _QuietHandler(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript"}

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


def first_frame(browser: Any, url: str, *, session: dict[str, str] | None = None) -> float:
    """Seconds from navigation start to the page's first-frame mark, in a new tab (its own context: no cache)."""
    context = browser.new_context(viewport=VIEWPORT)
    try:
        if session is not None:
            context.add_init_script(f"sessionStorage.setItem('renderfarm.session', {json.dumps(json.dumps(session))});")
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector("#view[data-frames]", state="attached", timeout=TIMEOUT_MS)
        started: float = page.evaluate(f"performance.getEntriesByName('{MARK}')[0].startTime")
        return started / 1000
    finally:
        context.close()


def measure_at(api_url: str, email: str, token: str, *, pairs: int, warmup: int, log: Log) -> PairResult:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise BenchError(
            "the page pair drives a browser with Playwright, which is not installed",
            hint="python3 -m pip install -e '.[test]'",
        ) from exc
    if not Path(CHROMIUM).exists():
        raise BenchError(f"the page pair needs Debian's chromium at {CHROMIUM}", hint="bash scripts/install-host.sh")

    scene = json.loads(example_scene_path().read_text())
    with sync_playwright() as p, minimal_site(scene) as minimal:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            spec = PairSpec(
                name=NAME,
                title=f"the page's first frame of the furnished room ({len(scene['objects'])} objects) vs a minimal"
                " three.js page drawing the same objects",
                a_label="GET / (signed in) -> token check, scene from the API, room built, first frame",
                b_label="minimal page: three.js, scene.json, the same meshes, first frame",
                a=lambda: first_frame(browser, api_url + "/", session={"email": email, "token": token}),
                b=lambda: first_frame(browser, minimal + "/index.html"),
                goal=Goal(1.3, GoalKind.AT_MOST),
            )
            result = run_pair(spec, pairs=pairs, warmup=warmup, log=log)
        finally:
            browser.close()
    result.notes.append(f"chromium {CHROMIUM}, SwiftShader WebGL, viewport {VIEWPORT['width']}x{VIEWPORT['height']}")
    return result


def measure(stack: BenchStack, *, pairs: int, warmup: int, log: Log) -> PairResult:
    """The pair against the bench stack's API, as a user it seeds."""
    from provisioner.credits import read_token
    from provisioner.services import api_url

    email = stack.seed_user()
    return measure_at(
        api_url(stack.settings), email, read_token(stack.settings, email), pairs=pairs, warmup=warmup, log=log
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m bench.page", description=__doc__.splitlines()[0])
    ap.add_argument("--api-url", required=True, help="the stack's API, e.g. http://127.0.0.1:8000")
    ap.add_argument("--email", required=True, help="a user of that stack")
    ap.add_argument("--token-file", required=True, type=Path, help="a file holding the user's API token")
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args(argv)
    try:
        token = args.token_file.read_text().strip()
        result = measure_at(
            args.api_url.rstrip("/"), args.email, token, pairs=args.pairs, warmup=args.warmup, log=print
        )
    except (OSError, BenchError) as exc:
        print(f"bench.page: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result.to_json(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
