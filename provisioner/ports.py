"""TCP ports on this host: is one taken, and a free one. Used by services (to refuse a taken port and suggest a
free one), by the test kit and by the bench (to place throw-away stacks)."""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"


def port_taken(port: int, host: str = LOOPBACK) -> bool:
    """True when something holds `port` on `host` (a bind fails)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on `host` that nothing listens on right now (the kernel's choice of an ephemeral port)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
