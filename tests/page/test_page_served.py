"""The page as the API serves it: its files, their Content-Security-Policy (no inline script), three.js vendored with
its licence, and the routes the page adds (a user's jobs, their event stream) guarded like every other."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable
from html.parser import HTMLParser

import httpx
import pytest

from renderdev.testing import RenderStack, TestUser
from renderfarm.examples import example_scene_path

pytestmark = pytest.mark.integration


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self._open: dict[str, str | None] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._open = dict(attrs)
            self.scripts.append((self._open, ""))

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._open = None


def csp(response: httpx.Response) -> dict[str, list[str]]:
    header = response.headers.get("content-security-policy", "")
    return {d.split()[0]: d.split()[1:] for d in (x.strip() for x in header.split(";")) if d}


def test_the_page_and_its_files_carry_a_csp_that_allows_no_inline_script(renderdev_stack: RenderStack) -> None:
    with httpx.Client(base_url=renderdev_stack.api_url, timeout=10) as http:
        page = http.get("/")  # no token: the page itself is public, the API behind it is not
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        policy = csp(page)
        assert policy["default-src"] == ["'none'"]
        assert policy["frame-ancestors"] == ["'none'"]
        assert policy["form-action"] == ["'none'"]
        assert policy["connect-src"] == ["'self'"]
        scripts = policy["script-src"]
        assert "'unsafe-inline'" not in scripts and "'unsafe-eval'" not in scripts
        assert page.headers["x-content-type-options"] == "nosniff"

        html = Tags()
        html.feed(page.text)
        # Every script is a file from this origin, but the import map (JSON, not code), which is allowed by its hash.
        inline = [(attrs, text) for attrs, text in html.scripts if "src" not in attrs]
        assert [attrs.get("type") for attrs, _ in inline] == ["importmap"]
        digest = base64.b64encode(hashlib.sha256(inline[0][1].encode()).digest()).decode()
        assert scripts == ["'self'", f"'sha256-{digest}'"]
        for attrs, _ in html.scripts:
            assert "src" not in attrs or str(attrs["src"]).startswith("/static/"), attrs
        # No inline event handlers or styles in the markup (the CSP would refuse them anyway).
        for tag, attrs in html.tags:
            assert not any(name.startswith("on") or name == "style" for name in attrs), (tag, attrs)
            assert tag != "style"

        files = [
            "/static/app.js",
            "/static/page.css",
            "/static/vendor/three/three.module.js",
            "/static/vendor/three/three.core.js",
            "/static/vendor/three/addons/controls/OrbitControls.js",
            "/static/vendor/three/addons/controls/PointerLockControls.js",
            "/static/vendor/three/LICENSE",
        ]
        for path in files:
            resp = http.get(path)
            assert resp.status_code == 200, path
            assert csp(resp) == policy, path
            assert resp.headers["x-content-type-options"] == "nosniff"
        assert http.get("/static/app.js").headers["content-type"].startswith("text/javascript")
        core = http.get("/static/vendor/three/three.core.js").text
        assert re.search(r"const REVISION = '187'", core)
        assert "MIT License" in http.get("/static/vendor/three/LICENSE").text
        # Only the files the package ships: nothing else of the file system is reachable through /static/.
        for probe in ["/static/../core.py", "/static/%2e%2e/core.py", "/static/vendor/../../page.py", "/static/"]:
            assert http.get(probe).status_code == 404, probe
        # The page's own code names no other origin: no CDN, nothing but the API.
        for path in ["/", "/static/app.js", "/static/api.js", "/static/view3d.js", "/static/jobs.js", "/static/dom.js"]:
            assert not re.search(r"https?://", http.get(path).text), path


def test_the_routes_the_page_uses_need_the_users_token(
    renderdev_stack: RenderStack, new_user: Callable[..., TestUser]
) -> None:
    alice, bob = new_user(), new_user()
    with httpx.Client(base_url=renderdev_stack.api_url, timeout=10) as http:
        for path in [
            "/examples",
            "/examples/furnished_room",
            f"/users/{alice.email}/renders",
            f"/users/{alice.email}/renders/events",
        ]:
            resp = http.get(path)
            assert resp.status_code == 401, path
            assert resp.headers["www-authenticate"] == "Bearer"
        for path in [f"/users/{alice.email}/renders", f"/users/{alice.email}/renders/events"]:
            resp = http.get(path, headers=bob.headers)
            assert resp.status_code == 403, path
            assert bob.email in resp.json()["detail"]
        listed = http.get("/examples", headers=alice.headers).json()
        assert {"name": "furnished_room", "title": "furnished room", "objects": 133} in listed
        scene = http.get("/examples/furnished_room", headers=alice.headers)
        assert scene.content == example_scene_path().read_bytes()
        missing = http.get("/examples/..%2Fscene", headers=alice.headers)
        assert missing.status_code == 404


def test_the_job_list_is_the_users_own_newest_first_and_bounded(
    renderdev_stack: RenderStack, new_user: Callable[..., TestUser]
) -> None:
    alice, bob = new_user(credits=30), new_user()
    scene = example_scene_path().read_text()
    with httpx.Client(base_url=renderdev_stack.api_url, timeout=10) as http:

        def post(user: TestUser, quality: str) -> str:
            resp = http.post(
                "/renders",
                headers={**user.headers, "Content-Type": "application/json"},
                content=f'{{"quality": "{quality}", "scene": {scene}}}',
            )
            assert resp.status_code == 202, resp.text
            return str(resp.json()["mjid"])

        mine = [post(alice, "preview"), post(alice, "hd"), post(alice, "preview")]
        post(bob, "preview")
        listed = http.get(f"/users/{alice.email}/renders", headers=alice.headers).json()
        assert [j["mjid"] for j in listed["jobs"]] == mine[::-1]
        assert listed["balance"] == 20 and listed["prices"] == {"preview": 0, "hd": 10}
        hd = listed["jobs"][1]
        assert (hd["quality"], hd["price"], hd["state"], hd["queue"], hd["attempts"]) == ("hd", 10, "queued", "pq", [])
        two = http.get(f"/users/{alice.email}/renders", params={"limit": 2}, headers=alice.headers).json()
        assert [j["mjid"] for j in two["jobs"]] == mine[:0:-1]
        too_many = http.get(f"/users/{alice.email}/renders", params={"limit": 101}, headers=alice.headers)
        assert too_many.status_code == 422
