"""Worker "hosts" on this one machine (issue 11): each a network namespace of the test's own, joined to the host by
a veth pair whose host end sits on a bridge of the test's own, in a free private /24 (10.213.N.0/24, tests/netif.py).
The bridge's address (10.213.N.1) is an address of this host, on which the stack is exposed (`--expose`); each
namespace has its own address (10.213.N.11, .12, ...) and no route anywhere else, so a worker in it reaches the
stack only through the exposed TLS ports, as a worker on another machine does.

A host's processes share the file system (the checkout, the Blender the `host_blender` fixture installed) but not the
network: `ip netns pids` lists exactly them, so "every process of one host" can be killed with SIGKILL at once.
Everything made here is named after the test's own tag and removed in a `finally` (namespaces, links).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.netif import free_subnet, sh


@dataclass
class Host:
    """One worker host: a network namespace and its address."""

    name: str  # the namespace
    address: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(
        self, argv: Sequence[str], *, env: Mapping[str, str], log: Path, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """Run `argv` inside this host (its own process group), its output appended to `log`."""
        with log.open("ab") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.name, *argv],
                env=dict(env),
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def run(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv],
            env=dict(env) if env is not None else None,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def pids(self) -> list[int]:
        """Every process in this host's network namespace (the worker, its work horses, their Blenders)."""
        out = sh("ip", "netns", "pids", self.name, check=False).stdout
        return [int(p) for p in out.split()]

    def kill_all(self) -> list[int]:
        """SIGKILL every process of this host at once, as a machine that loses power: nothing gets to clean up."""
        killed = self.pids()
        for pid in killed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        return killed

    def stop(self, timeout: float = 40.0) -> None:
        """SIGTERM each process group started here (a worker drains), SIGKILL what is left after `timeout`."""
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        self.kill_all()


@dataclass
class HostNetwork:
    """The bridge (its address is the stack's side) and the hosts on it."""

    bridge: str
    address: str  # the bridge's address: an address of this host
    hosts: list[Host]


@contextmanager
def host_network(count: int) -> Iterator[HostNetwork]:
    """`count` hosts in network namespaces on a bridge of their own, in a 10.213.X.0/24 no interface or route of this
    host uses (tests/netif.py); removed afterwards whatever happened."""
    tag = uuid.uuid4().hex[:6]
    subnet = free_subnet()
    bridge = f"rdb{tag}"
    net = HostNetwork(bridge=bridge, address=str(subnet[1]), hosts=[])
    made_links: list[str] = []
    try:
        sh("ip", "link", "add", bridge, "type", "bridge")
        made_links.append(bridge)
        sh("ip", "addr", "add", f"{net.address}/24", "dev", bridge)
        sh("ip", "link", "set", bridge, "up")
        for i in range(count):
            ns = f"rdh{tag}{i}"
            outer = f"rdv{tag}{i}"
            sh("ip", "netns", "add", ns)
            net.hosts.append(Host(name=ns, address=str(subnet[11 + i])))
            sh("ip", "link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", ns)
            made_links.append(outer)
            sh("ip", "link", "set", outer, "master", bridge)
            sh("ip", "link", "set", outer, "up")
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{net.hosts[-1].address}/24", "dev", "eth0")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield net
    finally:
        for host in net.hosts:
            host.stop(timeout=5)
            sh("ip", "netns", "del", host.name, check=False)
        for link in reversed(made_links):
            sh("ip", "link", "del", link, check=False)
