"""The loopback guard (issue 8): on a Docker engine before 28, a machine on the same network segment reaches the
ports a stack publishes on 127.0.0.1 (moby issues 41872 and 45610); renderdev's guard drops those packets.

The neighbour is a network namespace of this test's own, joined to the host by a veth pair in a private /30
(10.253.7.0/30). It sends to 127.0.0.1 through the veth, as a LAN host sends a packet for 127.0.0.1 to our MAC
address: its own loopback stays down (so 127.0.0.1 is not local there), a route takes 127.0.0.1 to the host,
and `route_localnet` on its end of the veth lets it accept the answers, which leave the host from 127.0.0.1
(the DNAT undone). A neighbour is free to set that on its own machine; nothing is changed on the host's side:
Docker's DNAT in nat PREROUTING rewrites the destination before the host's martian check, so no
`route_localnet` is needed there. Traffic goes only to 127.0.0.1 and the namespace's addresses.

Every iptables rule a test adds to the host carries its project's name, and is deleted (exactly it) in a
`finally`; the namespaces and the veth too. The rule bookkeeping is also tried in a namespace's own tables,
where no host rule is at stake."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from docker import DockerClient

from provisioner.config import Settings, load_settings
from provisioner.firewall import (
    CHAIN,
    HOST,
    PORT_SETTINGS,
    Iptables,
    Rule,
    check_guard,
    comment_for,
    engine_version,
    guard_needed,
    ours,
    owner,
    parse_listing,
    plan_guard,
    remove_guard,
    remove_project_rules,
    wanted_rules,
)
from provisioner.ports import free_port
from provisioner.services import api_url
from tests.faults.common import compose_stack, invoke_env, new_host, run_invoke

pytestmark = [pytest.mark.integration, pytest.mark.faults]

NS = "rdguard"  # the neighbour
HOST_IF, NS_IF = "rdguard-h", "rdguard-n"
HOST_ADDR, NS_ADDR = "10.253.7.1", "10.253.7.2"
RULES_NS = "rdguard-fw"  # a namespace whose own iptables tables the bookkeeping test uses
PROBE_TIMEOUT = 3.0
# One request per service that makes it answer: HTTP, a Redis command, Postgres' SSLRequest.
PAYLOADS = {"api": "GET /healthz HTTP/1.0\r\n\r\n", "redis": "PING\r\n", "db": "\x00\x00\x00\x08\x04\xd2\x16\x2f"}
PROBE = r"""
import json, socket, sys
found = {}
for service, port, payload in json.loads(sys.argv[1]):
    got = {"connected": False, "reply": "", "error": ""}
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=float(sys.argv[2])) as s:
            got["connected"] = True
            s.settimeout(float(sys.argv[2]))
            s.sendall(payload.encode("latin-1"))
            got["reply"] = s.recv(200).decode("latin-1")
    except OSError as exc:
        got["error"] = f"{type(exc).__name__}: {exc}"
    found[service] = got
print(json.dumps(found))
"""


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check and done.returncode != 0:
        raise AssertionError(f"{shlex.join(argv)} failed (exit {done.returncode}): {done.stderr.strip()}")
    return done


def remove_neighbour() -> None:
    sh("ip", "netns", "del", NS, check=False)  # takes its end of the veth with it
    sh("ip", "link", "del", HOST_IF, check=False)


@contextmanager
def neighbour() -> Iterator[None]:
    """The namespace NS on the host's segment HOST_IF, routing 127.0.0.1 to the host."""
    remove_neighbour()  # what a killed earlier run left
    try:
        sh("ip", "netns", "add", NS)
        sh("ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF, "netns", NS)
        sh("ip", "addr", "add", f"{HOST_ADDR}/30", "dev", HOST_IF)
        sh("ip", "link", "set", HOST_IF, "up")
        sh("ip", "-n", NS, "addr", "add", f"{NS_ADDR}/30", "dev", NS_IF)
        sh("ip", "-n", NS, "link", "set", NS_IF, "up")
        sh("ip", "-n", NS, "route", "add", "127.0.0.1/32", "via", HOST_ADDR, "dev", NS_IF)
        sh("ip", "netns", "exec", NS, "sysctl", "-q", "-w", f"net.ipv4.conf.{NS_IF}.route_localnet=1")
        yield
    finally:
        remove_neighbour()


def probe(ports: dict[str, int]) -> dict[str, dict[str, Any]]:
    """From the neighbour: per service, did a TCP connection to 127.0.0.1:<port> open, and what came back."""
    wanted = [(svc, port, PAYLOADS[svc]) for svc, port in ports.items()]
    done = sh("ip", "netns", "exec", NS, sys.executable, "-c", PROBE, json.dumps(wanted), str(PROBE_TIMEOUT))
    found: dict[str, dict[str, Any]] = json.loads(done.stdout)
    return found


def stack_ports(settings: Settings) -> dict[str, int]:
    return {svc: int(getattr(settings, key)) for svc, key in PORT_SETTINGS.items()}


def project_lines(project: str, iptables: Iptables = HOST) -> list[str]:
    """This project's rules as listed (`-S`), one string each."""
    return [shlex.join(item.tokens) for item in ours(parse_listing(iptables.listing()), project)]


def dropped(project: str) -> dict[int, int]:
    """Packets each of the project's DROP rules on the host has dropped, by port (`iptables -S -v` counters)."""
    counts: dict[int, int] = {}
    for line in HOST.run("-S", CHAIN, "-v").stdout.splitlines():
        tokens = shlex.split(line)
        comment = tokens[tokens.index("--comment") + 1] if "--comment" in tokens else ""
        who = owner(comment)
        if who is None or who[0] != project or "-c" not in tokens:
            continue
        port = int(tokens[tokens.index("--dport") + 1])
        counts[port] = int(tokens[tokens.index("-c") + 1])
    return counts


def guard_check(env: dict[str, str]) -> dict[str, Any]:
    done = run_invoke(env, "status", "--json")
    report = json.loads(done.stdout)
    (check,) = [c for c in report["checks"] if c["name"] == "loopback guard"]
    return dict(check)


def test_a_neighbour_reaches_the_loopback_ports_until_the_guard_drops_them(
    docker_client: DockerClient, project_images: Settings, tmp_path: Path, cleanup_project: list[str]
) -> None:
    host = new_host(tmp_path / "host", "rdguard")
    cleanup_project.append(host.project)
    settings = host.settings()
    env = invoke_env(settings)
    ports = stack_ports(settings)
    tag = uuid.uuid4().hex[:8]
    # Two rules that are not this project's: down --all must leave both. Each is for a free port, so harmless.
    foreign = Rule("127.0.0.1/32", "!lo", "tcp", free_port(), "DROP", f"rdtest-foreign-{tag}")
    other_project = f"rdguard-other-{tag}"
    other = Rule("127.0.0.1/32", "!lo", "tcp", free_port(), "DROP", comment_for(other_project, "api"))
    try:
        with compose_stack(docker_client, settings), neighbour():
            version = engine_version(docker_client)
            if not guard_needed(version):  # Docker 28 or newer drops these packets itself
                assert not plan_guard(docker_client, settings).needed
                assert not any(r["connected"] for r in probe(ports).values())
                return

            # The hole is real on this engine: the neighbour opens each port and the service answers it.
            before = probe(ports)
            assert all(r["connected"] and r["reply"] for r in before.values()), before
            assert before["api"]["reply"].startswith("HTTP/1.1 200"), before["api"]
            assert before["redis"]["reply"].startswith("-NOAUTH"), before["redis"]
            assert before["db"]["reply"] in ("N", "S"), before["db"]

            check = guard_check(env)
            assert not check["ok"] and check["fix"] == "invoke setup", check
            assert str(settings.api_port) in check["state"] and version in check["state"], check

            dry = run_invoke(env, "setup", "--dry-run")
            assert dry.returncode == 0, dry.stdout + dry.stderr
            assert "change services: loopback guard" in dry.stdout, dry.stdout
            assert f"{settings.api_port} (api)" in dry.stdout, dry.stdout
            assert project_lines(settings.project) == [], "a dry run added a rule"

            HOST.run("-A", CHAIN, *foreign.args())
            HOST.run("-A", CHAIN, *other.args())
            kept = [line for line in HOST.listing().splitlines() if foreign.comment in line or other.comment in line]
            assert len(kept) == 2, kept

            # The guard, as `invoke setup` applies it (its services phase's first step).
            step = plan_guard(docker_client, settings)
            assert step.needed and step.apply is not None, step
            said = step.apply()
            assert "added DROP rules for ports" in (said or ""), said
            assert len(project_lines(settings.project)) == 3

            after = probe(ports)
            assert not any(r["connected"] for r in after.values()), after
            counts = dropped(settings.project)
            assert set(counts) == set(ports.values()) and all(n > 0 for n in counts.values()), counts
            # This host's own clients come over lo, which the guard leaves alone.
            assert httpx.get(f"{api_url(settings)}/healthz", timeout=30).status_code == 200

            check = guard_check(env)
            assert check["ok"], check
            again = run_invoke(env, "setup", "--dry-run")
            assert "ok     services: loopback guard" in again.stdout, again.stdout

            down = run_invoke(env, "down", "--all")
            assert down.returncode == 0, down.stdout + down.stderr
            assert f"loopback guard: removed 3 rule(s) of project {settings.project}" in down.stdout, down.stdout
            assert project_lines(settings.project) == []
            assert kept == [
                line for line in HOST.listing().splitlines() if foreign.comment in line or other.comment in line
            ], "down --all touched a rule that is not its project's"
    finally:
        remove_project_rules(settings.project)
        remove_project_rules(other_project)
        for item in parse_listing(HOST.listing()):
            if item.rule == foreign:
                HOST.run("-D", CHAIN, *item.tokens)
    assert project_lines(settings.project) == [] and project_lines(other_project) == []
    assert foreign.comment not in HOST.listing()


@contextmanager
def private_tables() -> Iterator[Iptables]:
    """iptables in a network namespace of our own: its tables are not the host's."""
    sh("ip", "netns", "del", RULES_NS, check=False)
    sh("ip", "netns", "add", RULES_NS)
    try:
        yield Iptables(("ip", "netns", "exec", RULES_NS, "iptables"))
    finally:
        sh("ip", "netns", "del", RULES_NS, check=False)


def test_the_guard_changes_only_its_projects_rules(docker_client: DockerClient, tmp_path: Path) -> None:
    old_engine = guard_needed(engine_version(docker_client))
    project = f"rdguard-{uuid.uuid4().hex[:8]}"

    def settings(**over: Any) -> Settings:
        values: dict[str, Any] = dict(project=project, state_dir=tmp_path / "state")
        values.update(redis_port=16379, db_port=15432, api_port=18000)
        values.update(over)
        return load_settings(**values)

    host_before = project_lines(project)
    with private_tables() as tables:
        foreign = '-A PREROUTING -d 127.0.0.1/32 ! -i lo -p tcp -m tcp --dport 18000 -m comment --comment "x" -j DROP'
        tables.run(*shlex.split(foreign))
        neighbour_rule = Rule("127.0.0.1/32", "!lo", "tcp", 16380, "DROP", comment_for(f"{project}x", "redis"))
        tables.run("-A", CHAIN, *neighbour_rule.args())
        others = [line for line in tables.listing().splitlines() if line.startswith("-A")]

        step = plan_guard(docker_client, settings(), iptables=tables)
        if not old_engine:
            assert not step.needed and "not needed" in step.detail
            assert check_guard(docker_client, settings(), iptables=tables)[0].ok
            return
        assert step.needed and step.apply is not None
        step.apply()
        assert len(project_lines(project, tables)) == 3
        assert not plan_guard(docker_client, settings(), iptables=tables).needed, "a second setup changes nothing"
        assert check_guard(docker_client, settings(), iptables=tables)[0].ok

        # The api port changes: the next setup replaces that one rule, and only it.
        moved = settings(api_port=18001)
        step = plan_guard(docker_client, moved, iptables=tables)
        assert step.needed and "remove 1 outdated rule(s)" in step.detail, step.detail
        assert step.apply is not None
        step.apply()
        mine = ours(parse_listing(tables.listing()), project)
        assert sorted(r.dport for r in (i.rule for i in mine) if r) == [15432, 16379, 18001]

        # A rule deleted by hand (or a reboot) shows in status, with the fix.
        (api_rule,) = [r for r in wanted_rules(moved, mirrored=False) if r.dport == 18001]
        tables.run("-D", CHAIN, *api_rule.args())
        (check,) = check_guard(docker_client, moved, iptables=tables)
        assert not check.ok and check.fix == "invoke setup" and "18001 (api)" in check.state, check

        assert remove_guard(docker_client, moved, iptables=tables).startswith("loopback guard: removed 2 rule(s)")
        assert remove_guard(docker_client, moved, iptables=tables) == f"loopback guard: no rules of project {project}"
        assert [line for line in tables.listing().splitlines() if line.startswith("-A")] == others
    assert project_lines(project) == host_before == [], "the host's own tables were touched"
