"""Users of a test stack: made in its database with credits and an API token, and an HTTP client signed in as one."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

FINAL_STATES = ("finished", "failed")


@dataclass(frozen=True)
class TestUser:
    __test__ = False  # not a test class, whatever pytest's collection thinks of the name

    email: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def seed_user(database_url: str, *, email: str | None = None, credits: int = 0) -> TestUser:
    """Create a user (a fresh email unless given) with `credits` and a new API token, the way
    `invoke seed-credits` does, in the stack's database. An existing user gets a new token (the old one stops
    working)."""
    from sqlalchemy import create_engine

    from renderfarm import migrate
    from renderfarm.credits import add_credits
    from renderfarm.db import make_sessionmaker

    who = email or f"u{uuid.uuid4().hex[:12]}@example.com"
    engine = create_engine(database_url)
    try:
        migrate.upgrade(engine)
        seeded = add_credits(make_sessionmaker(engine), who, credits, rotate_token=True)
    finally:
        engine.dispose()
    assert seeded.token is not None  # rotate_token always makes one
    return TestUser(email=who, token=seeded.token)


@dataclass
class RenderClient:
    """The API as one signed-in user sees it. `http` is the underlying httpx client (base URL and token set) for
    anything the helpers do not cover."""

    http: httpx.Client
    user: TestUser
    scene: dict[str, Any] = field(default_factory=dict)

    def post(self, quality: str = "preview", scene: dict[str, Any] | None = None) -> str:
        """POST /renders; returns the mjid (raises httpx.HTTPStatusError on a refusal)."""
        body = {"user": self.user.email, "quality": quality, "scene": scene or self.scene}
        resp = self.http.post("/renders", json=body)
        resp.raise_for_status()
        return str(resp.json()["mjid"])

    def job(self, mjid: str) -> dict[str, Any]:
        data: dict[str, Any] = self.http.get(f"/renders/{mjid}").raise_for_status().json()
        return data

    def wait(self, mjid: str, timeout: float = 300.0, poll: float = 0.2) -> dict[str, Any]:
        """Poll the job until it is finished or failed; AssertionError naming its last state at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(mjid)
            if job["state"] in FINAL_STATES:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"render {mjid} still {job['state']} after {timeout:.0f} s: is a worker running?")
            time.sleep(poll)

    def render(
        self, quality: str = "preview", scene: dict[str, Any] | None = None, timeout: float = 300.0
    ) -> dict[str, Any]:
        """Post, then wait: the job as it ended."""
        return self.wait(self.post(quality, scene), timeout=timeout)

    def image(self, mjid: str) -> bytes:
        resp = self.http.get(f"/renders/{mjid}/image")
        resp.raise_for_status()
        return resp.content

    def balance(self) -> int:
        return int(self.http.get(f"/users/{self.user.email}/credits").raise_for_status().json()["balance"])
