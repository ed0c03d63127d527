"""A network interface of the test's own with an address in 10.213.X.0/24: what an exposure (`--expose ADDRESS`) is
tried on. A veth pair whose other end is in a network namespace the test makes (so both ends are up and the host's
end carries a link); the host's end gets 10.213.X.1/24, the namespace's 10.213.X.2/24. X is one no interface or
route of this host uses. Traffic goes only to these addresses of our own; everything is deleted afterwards (the
namespace takes its end of the veth with it), also what a killed earlier run left under the same names."""

from __future__ import annotations

import ipaddress
import json
import shlex
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

PREFIX = "10.213"


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check and done.returncode != 0:
        raise AssertionError(f"{shlex.join(argv)} failed (exit {done.returncode}): {done.stderr.strip()}")
    return done


def _used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network this host has an address or a route in."""
    used = []
    for link in json.loads(sh("ip", "-j", "-4", "addr", "show").stdout or "[]"):
        for info in link.get("addr_info", []):
            used.append(ipaddress.IPv4Interface(f"{info['local']}/{info['prefixlen']}").network)
    for route in json.loads(sh("ip", "-j", "-4", "route", "show", "table", "all").stdout or "[]"):
        dst = route.get("dst", "")
        if dst and dst != "default":
            try:
                used.append(ipaddress.IPv4Network(dst, strict=False))
            except ValueError:
                pass
    return used


def free_subnet() -> ipaddress.IPv4Network:
    """A 10.213.X.0/24 that overlaps none of this host's addresses and routes."""
    used = _used_networks()
    for x in range(1, 255):
        net = ipaddress.IPv4Network(f"{PREFIX}.{x}.0/24")
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            return net
    raise AssertionError(f"no free {PREFIX}.X.0/24 on this host")


@dataclass(frozen=True)
class Veth:
    address: str  # the host's end: the address to expose on
    peer: str  # the namespace's end
    namespace: str
    host_if: str


@contextmanager
def veth_address() -> Iterator[Veth]:
    """A veth pair, the host's end with an address of a free 10.213.X.0/24; deleted afterwards."""
    tag = uuid.uuid4().hex[:6]
    ns, host_if, ns_if = f"rdexp-{tag}", f"rdx{tag}h", f"rdx{tag}n"
    net = free_subnet()
    host_addr, peer_addr = str(net[1]), str(net[2])
    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", ns)
        sh("ip", "addr", "add", f"{host_addr}/24", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "-n", ns, "addr", "add", f"{peer_addr}/24", "dev", ns_if)
        sh("ip", "-n", ns, "link", "set", ns_if, "up")
        yield Veth(host_addr, peer_addr, ns, host_if)
    finally:
        sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", host_if, check=False)
