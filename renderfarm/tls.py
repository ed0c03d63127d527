"""TLS for a worker that reaches an exposed stack (a worker file of format renderdev-worker/2, whose `ca` is the stack's
CA certificate): the API over https and Redis over TLS, each trusting that CA alone (never the system's bundle), and
the host name checked against the certificate (an IP address, matched with its IP subjectAltName).

Only the standard library's ssl and the clients' own options: redis-py's `ssl=True, ssl_ca_data=...`, and an
`ssl.SSLContext` for httpx's `verify`.
"""

from __future__ import annotations

import functools
import ssl
from typing import Any


@functools.cache
def ca_context(ca: str) -> ssl.SSLContext:
    """A client context that trusts only the CA certificate(s) `ca` (PEM) and checks the host name. Made once per CA
    and process: a worker's work horses inherit it made, so no job pays for it."""
    context = ssl.create_default_context(cadata=ca)  # with cadata, the default (system) CAs are not loaded
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def redis_tls_options(ca: str) -> dict[str, Any]:
    """redis.Redis keyword arguments for a TLS connection that trusts only `ca` and checks the host name."""
    return {
        "ssl": True,
        "ssl_ca_data": ca,
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_check_hostname": True,
    }
