"""The render page in a real browser: Debian's chromium driven by Playwright (no browser download), WebGL through
SwiftShader. Images (the canvas's screenshots, the rendered PNGs) are decoded by the browser itself, so the tests
need no image library."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, BrowserContext, Locator, Page

from renderdev.testing import TestUser

CHROMIUM = Path("/usr/bin/chromium")
# Headless WebGL in recent Chromium needs SwiftShader allowed explicitly; root in a container needs no sandbox.
LAUNCH_ARGS = ["--no-sandbox", "--enable-unsafe-swiftshader", "--use-angle=swiftshader"]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
TIMEOUT_MS = 30_000

# In the page's context (page.evaluate goes through the DevTools protocol, which the page's CSP does not govern):
# decode a PNG, scale it to w x h, and return the numbers the tests look at.
IMAGE_STATS = """async ([b64, w, h, marker]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const bitmap = await createImageBitmap(new Blob([bytes], { type: 'image/png' }));
  const canvas = new OffscreenCanvas(w, h);
  const g = canvas.getContext('2d');
  g.drawImage(bitmap, 0, 0, w, h);
  const px = g.getImageData(0, 0, w, h).data;
  // The median, not the mean: a few stray pixels elsewhere (a 4-sample render's noise) do not move it.
  const median = (v) => {
    v.sort((a, b) => a - b);
    const m = v.length >> 1;
    return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
  };
  const colours = new Set();
  const xs = [], ys = [];
  for (let i = 0; i < px.length; i += 4) {
    const [r, gr, b] = [px[i], px[i + 1], px[i + 2]];
    colours.add((r >> 4) << 8 | (gr >> 4) << 4 | (b >> 4));
    if (gr > 120 && gr > marker * Math.max(r, b)) { xs.push((i / 4) % w); ys.push(Math.floor(i / 4 / w)); }
  }
  return { width: bitmap.width, height: bitmap.height, colours: colours.size,
           marker: xs.length ? { x: median(xs), y: median(ys), pixels: xs.length } : null };
}"""

DIFFERENCE = """async ([a64, b64, w, h]) => {
  const load = async (b64) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const bitmap = await createImageBitmap(new Blob([bytes], { type: 'image/png' }));
    const canvas = new OffscreenCanvas(w, h);
    const g = canvas.getContext('2d');
    g.drawImage(bitmap, 0, 0, w, h);
    return g.getImageData(0, 0, w, h).data;
  };
  const [a, b] = [await load(a64), await load(b64)];
  let changed = 0;
  for (let i = 0; i < a.length; i += 4) {
    if (Math.abs(a[i] - b[i]) + Math.abs(a[i + 1] - b[i + 1]) + Math.abs(a[i + 2] - b[i + 2]) > 48) changed += 1;
  }
  return changed / (w * h);
}"""

# Installed by a test (not by the page): every state a job's list item shows, with where it came from.
WATCH_JOBS = """() => {
  window.__jobStates = [];
  const seen = new Map();
  const note = () => {
    for (const li of document.querySelectorAll('#jobs li.job')) {
      const key = li.dataset.mjid;
      const now = li.dataset.state + '|' + li.dataset.source + '|' + li.querySelector('.job-status').textContent;
      if (seen.get(key) !== now) {
        seen.set(key, now);
        window.__jobStates.push({ mjid: key, state: li.dataset.state, source: li.dataset.source,
                                  status: li.querySelector('.job-status').textContent, at: Date.now() });
      }
    }
  };
  const options = { subtree: true, childList: true, attributes: true };
  new MutationObserver(note).observe(document.getElementById('jobs'), options);
  note();
}"""


@dataclass
class PageSession:
    """One browser tab on the page, as one user. `requests` holds every URL the tab asked for; `problems` every
    page error, console error and dialog (an alert() from injected markup would land there)."""

    context: BrowserContext
    page: Page
    user: TestUser
    api_url: str
    requests: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    navigations: int = 0

    def open(self) -> None:
        self.page.goto(self.api_url + "/")

    def sign_in(self, *, wait_live: bool = True) -> None:
        self.page.fill("#email", self.user.email)
        self.page.fill("#token", self.user.token)
        self.page.click("#sign-in button[type=submit]")
        self.wait_drawn()
        if wait_live:
            self.page.wait_for_selector("#connection[data-state=live]", timeout=TIMEOUT_MS)

    def wait_drawn(self) -> None:
        self.page.wait_for_selector("#view[data-frames]", state="attached", timeout=TIMEOUT_MS)

    def frames(self) -> int:
        return int(self.page.get_attribute("#view", "data-frames") or 0)

    def settle(self, quiet: float = 0.3, timeout: float = 10.0) -> None:
        """Until the view has drawn no new frame for `quiet` seconds (it draws only on change)."""
        deadline = time.monotonic() + timeout
        last, since = self.frames(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = self.frames()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return
        raise AssertionError(f"the view kept drawing for {timeout} s")

    def canvas_png(self) -> bytes:
        self.settle()
        return self.page.locator("#view").screenshot()

    def eye(self) -> tuple[float, float, float]:
        e = self.page.locator("#eye")
        return (
            float(e.get_attribute("data-x") or "nan"),
            float(e.get_attribute("data-y") or "nan"),
            float(e.get_attribute("data-z") or "nan"),
        )

    def drag(self, dx: float, dy: float = 0.0) -> None:
        box = self.page.locator("#view").bounding_box()
        assert box is not None
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        self.page.mouse.move(x, y)
        self.page.mouse.down()
        self.page.mouse.move(x + dx, y + dy, steps=8)
        self.page.mouse.up()

    def set_scene(self, scene_json: str) -> None:
        self.page.fill("#scene-json", scene_json)
        self.page.click("#apply-scene")

    def job(self, mjid: str) -> Locator:
        return self.page.locator(f'#jobs li.job[data-mjid="{mjid}"]')

    def newest_job(self, timeout: float = 10.0) -> str:
        self.page.wait_for_selector("#jobs li.job", timeout=timeout * 1000)
        mjid = self.page.locator("#jobs li.job").first.get_attribute("data-mjid")
        assert mjid
        return mjid

    def wait_state(self, mjid: str, state: str, timeout: float = 30.0) -> Locator:
        item = self.job(mjid)
        self.page.wait_for_selector(f'#jobs li.job[data-mjid="{mjid}"][data-state="{state}"]', timeout=timeout * 1000)
        return item

    def watch_jobs(self) -> None:
        self.page.evaluate(WATCH_JOBS)

    def job_states(self) -> list[dict[str, Any]]:
        states: list[dict[str, Any]] = self.page.evaluate("() => window.__jobStates")
        return states

    def image_stats(self, png: bytes, width: int, height: int, marker: float = 1.1) -> dict[str, Any]:
        """{width, height, colours (distinct, at 4 bits a channel), marker}: where the pixels whose green is over
        `marker` times their red and blue (and bright) are (the median x and y) and how many, in the picture
        scaled to width x height."""
        stats: dict[str, Any] = self.page.evaluate(IMAGE_STATS, [base64.b64encode(png).decode(), width, height, marker])
        return stats

    def difference(self, a: bytes, b: bytes, width: int = 320, height: int = 180) -> float:
        """The share of pixels that differ clearly between two screenshots (scaled to width x height)."""
        share: float = self.page.evaluate(
            DIFFERENCE, [base64.b64encode(a).decode(), base64.b64encode(b).decode(), width, height]
        )
        return share


def new_session(
    browser: Browser, api_url: str, user: TestUser, *, viewport: dict[str, int] = DESKTOP, bypass_csp: bool = False
) -> PageSession:
    context = browser.new_context(viewport=viewport, accept_downloads=True, bypass_csp=bypass_csp)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    session = PageSession(context=context, page=page, user=user, api_url=api_url)
    page.on("request", lambda r: session.requests.append(r.url))
    page.on("pageerror", lambda e: session.problems.append(f"page error: {e}"))

    def console(m: Any) -> None:
        # An API's 4xx answer (a 402, a 422) is logged by the browser as a failed load: expected in these tests.
        if m.type == "error" and not m.text.startswith("Failed to load resource"):
            session.problems.append(f"console {m.type}: {m.text}")

    page.on("console", console)

    def dialog(d: Any) -> None:
        session.problems.append(f"dialog {d.type}: {d.message}")
        d.dismiss()

    page.on("dialog", dialog)

    def navigated(frame: Any) -> None:
        if frame == page.main_frame:
            session.navigations += 1

    page.on("framenavigated", navigated)
    return session
