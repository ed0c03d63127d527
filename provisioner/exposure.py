"""Exposure: the stack reached from other hosts, over TLS only, when asked (`invoke setup --expose ADDRESS`,
`invoke services --expose ADDRESS`).

By default every port is published on 127.0.0.1 (settings.bind_host). Exposed on ADDRESS (an IPv4 address of one of
this host's interfaces), the stack also publishes, on that address only:
- the API over HTTPS: the `api-tls` service of compose/expose.yaml (the api image, uvicorn with the server
  certificate), on ADDRESS:<api_port>;
- Redis's TLS port (`tls-port`, compose/redis/entrypoint.sh), on ADDRESS:<redis_port>; clients are not asked for a
  certificate (`tls-auth-clients no`): a worker's ACL user and password authenticate it.
Nothing plain is published on ADDRESS: the plain ports stay on 127.0.0.1 and the database is never exposed. The
certificates are the stack's own CA's (provisioner/tls.py); a worker file for an exposed stack carries that CA.

The choice is remembered in `<state>/<project>/expose.json`, so a later `invoke services` or `invoke setup` without
`--expose` keeps it; `--expose none` withdraws it (the api-tls container goes, Redis is started without its TLS port).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Console

from provisioner.config import Settings
from provisioner.dockerapi import service_containers
from provisioner.errors import ConfigError, RenderdevError
from provisioner.fsops import atomic_write_text
from provisioner.plan import Check, Outcome, Step, StepState, report, run_steps
from provisioner.ports import port_taken

if TYPE_CHECKING:
    import docker

    from provisioner.worker_access import Endpoints

TLS_SERVICE = "api-tls"  # compose/expose.yaml's HTTPS api
NONE = "none"  # --expose none: withdraw an exposure
FILE_MODE = 0o644


def host_addresses() -> list[str]:
    """The IPv4 addresses assigned to this host's interfaces (`ip -4 addr`), loopback included."""
    from provisioner import proc

    done = proc.run(["ip", "-j", "-4", "addr", "show"], timeout=10, hint="install iproute2 (apt-get install iproute2)")
    try:
        links = json.loads(done.stdout or "[]")
    except ValueError as exc:
        raise RenderdevError(f"`ip -j -4 addr show` printed no JSON: {exc}") from exc
    return [
        str(info["local"])
        for link in links
        for info in link.get("addr_info", [])
        if info.get("family") == "inet" and info.get("local")
    ]


def check_address(address: str, addresses: Sequence[str] | None = None) -> str:
    """`address` as an exposure may use it: an IPv4 address assigned to one of this host's interfaces, neither
    loopback (the stack is there already) nor 0.0.0.0 (every address). ConfigError naming the address and listing
    the host's addresses. Returns it in its canonical form."""
    found = list(addresses) if addresses is not None else host_addresses()
    usable = [a for a in found if not ipaddress.IPv4Address(a).is_loopback]
    listing = ", ".join(usable) or "(none but loopback)"
    hint = f"use one of this host's addresses: {listing}; or --expose none (127.0.0.1 only)"
    try:
        ip = ipaddress.IPv4Address(address.strip())
    except ValueError:
        raise ConfigError(f"--expose {address!r} is not an IPv4 address", hint=hint) from None
    if ip.is_loopback:
        raise ConfigError(f"--expose {address}: a loopback address; the stack is on 127.0.0.1 already", hint=hint)
    if ip.is_unspecified:
        raise ConfigError(f"--expose {address}: 0.0.0.0 would publish on every address of this host", hint=hint)
    if str(ip) not in found:
        raise ConfigError(f"--expose {address}: not an address of this host's interfaces", hint=hint)
    return str(ip)


def remembered(settings: Settings) -> str | None:
    """The address expose.json names, or None (not exposed, or no file)."""
    try:
        value = json.loads(settings.expose_file.read_text()).get("address")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _published_on(client: docker.DockerClient, settings: Settings, address: str) -> set[int]:
    """Host ports this project's containers publish on `address` now."""
    held: set[int] = set()
    for c in service_containers(client, settings.project, ("redis", TLS_SERVICE)).values():
        for found in ((c.attrs.get("NetworkSettings") or {}).get("Ports") or {}).values():
            held |= {int(b["HostPort"]) for b in found or [] if b.get("HostIp") == address and b.get("HostPort")}
    return held


def _refuse_ports_taken(client: docker.DockerClient, settings: Settings, address: str) -> None:
    ours = _published_on(client, settings, address)
    for key in ("api_port", "redis_port"):
        port = int(getattr(settings, key))
        if port not in ours and port_taken(port, address):
            raise ConfigError(
                f"port {port} on {address} ({key}, published there with TLS) is already in use",
                hint=f"stop what holds it (ss -ltnp 'sport = :{port}'), or set another {key}:"
                f" RENDERDEV_{key.upper()}=N invoke services",
            )


def plan_exposure(client: docker.DockerClient, settings: Settings) -> list[Step]:
    """The exposure's steps (first in the services phase): remember the choice in expose.json, and, when exposed, the
    CA and the server certificate (provisioner.tls). A withdrawn exposure removes the api-tls container."""
    from provisioner.tls import plan_tls

    address = settings.exposed_address
    before = remembered(settings)
    title = f"exposure of project {settings.project}"
    if address is None:
        if before is None:
            return [Step("services", title, StepState.OK, "not exposed: 127.0.0.1 only")]
        return [
            Step(
                "services",
                title,
                StepState.CHANGE,
                f"withdraw the exposure on {before} (127.0.0.1 only); the CA is kept in {settings.tls_dir}",
                lambda: withdraw(client, settings, before),
            )
        ]
    try:
        address = check_address(address)
    except ConfigError as exc:
        if before != address:
            raise
        raise ConfigError(f"{exc.message} (remembered in {settings.expose_file})", hint=exc.hint) from None
    _refuse_ports_taken(client, settings, address)
    what = describe(settings.model_copy(update={"expose": address}))
    if before == address:
        step = Step("services", title, StepState.OK, what)
    else:
        now = f"now {before}" if before else "now 127.0.0.1 only"
        step = Step(
            "services",
            title,
            StepState.CHANGE,
            f"{what} ({now}); remember it in {settings.expose_file}",
            lambda: remember(settings, address),
        )
    return [step, plan_tls(settings, address)]


def remember(settings: Settings, address: str) -> str:
    atomic_write_text(settings.expose_file, json.dumps({"address": address}, indent=2) + "\n", mode=FILE_MODE)
    return f"exposed on {address} with TLS (remembered in {settings.expose_file})"


def withdraw(client: docker.DockerClient, settings: Settings, before: str) -> str:
    """Forget the exposure and remove the api-tls container (compose no longer knows it: it is not in the files)."""
    removed = 0
    for c in service_containers(client, settings.project, (TLS_SERVICE,)).values():
        c.remove(force=True)
        removed += 1
    settings.expose_file.unlink(missing_ok=True)
    return f"exposure on {before} withdrawn" + (f", {TLS_SERVICE} container removed" if removed else "")


def expose(
    client: docker.DockerClient, settings: Settings, address: str, console: Console, *, dry_run: bool = False
) -> Outcome:
    """Expose the stack on `address` ("none": withdraw) and bring the services to it: the services phase of
    `invoke services --expose ADDRESS`, planned, shown, then applied. The same address again changes nothing."""
    from provisioner.setup import services_steps

    wanted = settings.model_copy(update={"expose": NONE if address.strip().lower() == NONE else address.strip()})
    steps = services_steps(client, wanted, dry_run=dry_run)
    outcome = run_steps(console, steps, dry_run=dry_run, heading="Plan: services")
    report(console, outcome, dry_run=dry_run)
    return outcome


def exposed_endpoints(settings: Settings) -> Endpoints:
    """Where a worker on another host reaches an exposed stack: the API over HTTPS and Redis's TLS port on the
    exposed address, and the CA (PEM) it trusts, alone. ConfigError when the stack is not exposed."""
    from provisioner.tls import ca_pem
    from provisioner.worker_access import Endpoints

    address = settings.exposed_address
    if address is None:
        raise ConfigError(
            f"project {settings.project} is not exposed: no address for a worker on another host",
            hint="invoke services --expose ADDRESS (an address of this host), or worker-config --address loopback",
        )
    return Endpoints(f"https://{address}:{settings.api_port}", address, settings.redis_port, ca=ca_pem(settings))


def describe(settings: Settings) -> str:
    """One line for `invoke setup` / `status`: where the stack is exposed, if anywhere."""
    address = settings.exposed_address
    if address is None:
        return "not exposed (127.0.0.1 only; invoke services --expose ADDRESS)"
    return f"exposed with TLS: API https://{address}:{settings.api_port}, Redis (TLS) {address}:{settings.redis_port}"


def check_exposure(client: docker.DockerClient, settings: Settings) -> list[Check]:
    """`invoke status` line: not exposed, or exposed on an address this host still has, with its certificates."""
    from provisioner.tls import plan_tls

    address = settings.exposed_address
    if address is None:
        return [Check("exposure", True, describe(settings))]
    try:
        check_address(address)
    except ConfigError as exc:
        return [Check("exposure", False, exc.message, "invoke services --expose ADDRESS (or --expose none)")]
    step = plan_tls(settings, address)
    if step.needed:
        return [Check("exposure", False, f"{describe(settings)}; certificates: {step.detail}", "invoke services")]
    return [Check("exposure", True, describe(settings))]
