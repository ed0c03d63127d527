"""A cloud metadata server on loopback, as strict as the real ones.

AWS (paths under /latest/): IMDSv2 required. `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds`
(1..21600) gives a token valid that many seconds; every GET must send it as `X-aws-ec2-metadata-token`, else
401. `spot/instance-action` answers 404 until the notice. GCP (paths under /computeMetadata/): `Metadata-Flavor:
Google` required, else 403; `instance/preempted` answers FALSE until the notice.
"""

from __future__ import annotations

import http.server
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

TOKEN_PATH = "/latest/api/token"
MAX_TOKEN_TTL = 21600


@dataclass
class MetadataState:
    """What the server was asked, and the switch that makes it announce the preemption."""

    body: bytes
    notice: threading.Event = field(default_factory=threading.Event)
    tokens: dict[str, float] = field(default_factory=dict)  # token -> monotonic expiry
    token_puts: int = 0
    gets: int = 0
    refused: int = 0  # GETs answered 401 (AWS) or 403 (GCP)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def revoke_tokens(self) -> None:
        with self.lock:
            self.tokens.clear()


def _handler(state: MetadataState) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
            ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
            if self.path != TOKEN_PATH:
                self._answer(404, b"")
            elif not ttl.isdigit() or not 1 <= int(ttl) <= MAX_TOKEN_TTL:
                self._answer(400, b"")
            else:
                token = uuid.uuid4().hex
                with state.lock:
                    state.token_puts += 1
                    state.tokens[token] = time.monotonic() + int(ttl)
                self._answer(200, token.encode())

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            with state.lock:
                state.gets += 1
                if self.path.startswith("/latest/"):
                    expiry = state.tokens.get(self.headers.get("X-aws-ec2-metadata-token", ""), 0.0)
                    if expiry <= time.monotonic():
                        state.refused += 1
                        self._answer(401, b"")
                        return
                elif self.headers.get("Metadata-Flavor") != "Google":
                    state.refused += 1
                    self._answer(403, b"")
                    return
            if state.notice.is_set():
                self._answer(200, state.body)
            elif self.path.endswith("/preempted"):
                self._answer(200, b"FALSE")
            else:
                self._answer(404, b"")

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@contextmanager
def metadata_server(path: str, body: bytes) -> Iterator[tuple[str, MetadataState]]:
    """Serve on 127.0.0.1; yields the notice URL for `path` and the server's state."""
    state = MetadataState(body=body)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}{path}", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
