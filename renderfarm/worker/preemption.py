"""The cloud's preemption notice: a thread that polls the instance metadata endpoint and, on a notice, drains the
worker the way a VM's shutdown does (SIGTERM to this process: rq's HerokuWorker stops Blender and the job goes to
sq). AWS spot (IMDSv2, /latest/...) and GCP preemptible VMs (any other URL) are told apart by the URL."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger("renderfarm.worker.preemption")
# AWS instance metadata (IMDSv2): a session token from PUT /latest/api/token, sent with every request.
AWS_TOKEN_PATH = "/latest/api/token"
AWS_TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
AWS_TOKEN_HEADER = "X-aws-ec2-metadata-token"
AWS_TOKEN_TTL = 21600  # seconds: the longest-lived token AWS gives


def preemption_notice(status: int, body: str) -> bool:
    """GCP's instance/preempted answers TRUE; AWS's spot/instance-action answers 200 with an action (404 before)."""
    if status != 200:
        return False
    text = body.strip()
    if text.upper() == "TRUE":
        return True
    try:
        data = json.loads(text)
    except ValueError:
        return False
    return isinstance(data, dict) and bool(data.get("action"))


def send_sigterm_to_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


class PreemptionWatcher(threading.Thread):
    """Polls the cloud metadata endpoint; on a notice, calls `on_notice` (default: SIGTERM to this process,
    the same drain as a VM's shutdown).

    The cloud is told by the URL. AWS (its path starts with /latest/): IMDSv2, which hosts may require (they
    answer a request without a token 401): a session token from `PUT /latest/api/token` is sent as
    X-aws-ec2-metadata-token, renewed before it expires and again whenever the endpoint answers 401; where
    the PUT is refused (an IMDSv1-only endpoint) the watcher polls without a token. GCP (any other URL): the
    `Metadata-Flavor: Google` header. Written here rather than borrowed from botocore's IMDS fetcher: two
    requests do not justify botocore, and it retries and times out on its own terms, not the poll's."""

    def __init__(
        self,
        url: str,
        poll: float,
        *,
        on_notice: Callable[[], None] = send_sigterm_to_self,
        token_ttl: int = AWS_TOKEN_TTL,
    ) -> None:
        super().__init__(name="preemption-watcher", daemon=True)
        self.url, self.poll = url, poll
        self.on_notice = on_notice
        self.token_ttl = token_ttl
        parts = urlsplit(url)
        self.aws = parts.path.startswith("/latest/")
        self.token_url = urlunsplit((parts.scheme, parts.netloc, AWS_TOKEN_PATH, "", ""))
        self.stopped = threading.Event()
        self.noticed = threading.Event()
        self._token: str | None = None
        self._renew_at = 0.0  # time.monotonic() after which the token is renewed before use
        self._refused = False

    def run(self) -> None:
        import httpx

        headers = {} if self.aws else {"Metadata-Flavor": "Google"}
        with httpx.Client(timeout=min(self.poll, 5.0), headers=headers) as http:
            while not self.stopped.is_set():
                try:
                    resp = self.check(http)
                    if preemption_notice(resp.status_code, resp.text):
                        log.warning("preemption notice from %s: draining", self.url)
                        self.noticed.set()
                        self.on_notice()
                        return
                    refused = resp.status_code in (401, 403)
                    if refused and not self._refused:  # said once, not at every poll
                        log.warning("preemption endpoint %s refuses the watcher (HTTP %s)", self.url, resp.status_code)
                    self._refused = refused
                except httpx.HTTPError as exc:
                    log.debug("preemption endpoint %s: %s", self.url, exc)
                self.stopped.wait(self.poll)

    def check(self, http: Any) -> Any:
        """One look at the endpoint (an httpx.Response); on AWS with the session token, renewed on a 401."""
        if not self.aws:
            return http.get(self.url)
        resp = http.get(self.url, headers=self._token_headers(http))
        if resp.status_code == 401:  # expired or revoked: a new token, and one more try
            resp = http.get(self.url, headers=self._token_headers(http, renew=True))
        return resp

    def _token_headers(self, http: Any, *, renew: bool = False) -> dict[str, str]:
        now = time.monotonic()
        if renew or self._token is None or now >= self._renew_at:
            resp = http.put(self.token_url, headers={AWS_TOKEN_TTL_HEADER: str(self.token_ttl)})
            if resp.status_code == 200 and resp.text.strip():
                self._token = resp.text.strip()
                # Renewed well before it expires: a tenth of its life early, at most a minute.
                self._renew_at = now + self.token_ttl - min(60.0, self.token_ttl / 10)
            else:
                log.debug("no IMDSv2 token from %s (HTTP %s): polling without one", self.token_url, resp.status_code)
                self._token, self._renew_at = None, now + self.poll
        return {AWS_TOKEN_HEADER: self._token} if self._token else {}

    def stop(self) -> None:
        self.stopped.set()
