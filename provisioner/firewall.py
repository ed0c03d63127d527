"""The loopback guard: iptables rules that keep the stack's 127.0.0.1 ports off the local network.

Why: a Docker engine before 28 publishes `127.0.0.1:PORT` with a DNAT rule in the nat table's PREROUTING
that matches packets from any interface (moby issues 41872 and 45610). A machine on the same network
segment that sends a packet for 127.0.0.1:PORT to this host's MAC address is forwarded to the container:
the kernel's "martian destination" check runs after the DNAT, on the container's address. Docker 28
(moby pull request 49325, `filterPortMappedOnLoopback`) adds one rule per published loopback port:

    iptables -t raw -A PREROUTING -d 127.0.0.1/32 ! -i lo -p tcp -m tcp --dport PORT -j DROP

On an older engine renderdev adds that same rule for each of the stack's ports (redis, db, api), with a
comment naming the project and the service (`renderdev-loopback-guard:<project>:<service>`). Only rules
carrying that comment are ever listed as ours, changed or removed; everything else in the chain is left
as it is.

Per project, not one rule for the whole host: each stack guards exactly the ports it publishes, and
`invoke down --all` removes that project's rules only, so another renderdev stack on the host keeps its
guard and no count of the projects sharing a rule is needed. A changed port is reconciled by the next
`invoke setup` (the old port's rule of this project goes, the new one is added).

As Docker 28 does:
- IPv6: nothing. The ports are bound to 127.0.0.1 only, and the kernel never accepts ::1 from another
  interface (IPv6 has no `route_localnet`).
- WSL2 with mirrored networking (a `loopback0` link and an executable /usr/bin/wslinfo): Windows reaches
  the host's loopback through `loopback0`, so an ACCEPT for that interface goes before the DROP.
- Engine 28 or newer: the engine does this itself; renderdev adds nothing (and `invoke setup` removes
  rules of this project left from an older engine).

Backends: the `iptables` command on PATH, the same one Docker 20.10 runs (Debian 12: iptables-nft). A DROP
in either backend's raw PREROUTING drops the packet (each registers its own netfilter hook), so the guard
works whichever backend holds Docker's own rules. Reading or changing rules needs root.

Rules do not survive a reboot: `invoke status` then shows the guard missing, `invoke setup` adds it back.

The `iptables` command is run through provisioner.proc rather than python-iptables: that library is
unmaintained and speaks only the legacy backend (libiptc), not iptables-nft.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from provisioner import proc
from provisioner.config import Settings
from provisioner.dockerapi import engine_version as engine_version  # asked once per client; tests import it here
from provisioner.errors import CommandError, HostWriteError
from provisioner.plan import Check, Step, StepState

if TYPE_CHECKING:
    import docker

GUARDED_SINCE = 28  # the first Docker engine major version that adds these rules itself
TABLE = "raw"
CHAIN = "PREROUTING"
COMMENT_PREFIX = "renderdev-loopback-guard"
PORT_SETTINGS = {"redis": "redis_port", "db": "db_port", "api": "api_port"}
WSL_LOOPBACK = "loopback0"
WSLINFO = Path("/usr/bin/wslinfo")
WAIT_SECONDS = "10"  # -w: wait this long for the legacy backend's xtables lock instead of failing
TIMEOUT = 60.0
INSTALL_HINT = "install it: sudo apt-get install iptables, then re-run: invoke setup"
COMPONENT = "services"
TITLE = "loopback guard (iptables raw PREROUTING)"
CHECK_NAME = "loopback guard"
_MAJOR = re.compile(r"^v?(\d+)\.")


# ---------------------------------------------------------------- the iptables command


@dataclass(frozen=True)
class Iptables:
    """How to run iptables: the host's by default. Tests pass a prefix that enters a network namespace
    of their own (`ip netns exec NS iptables`), whose rules are not the host's."""

    argv: tuple[str, ...] = ("iptables",)

    def available(self) -> bool:
        return shutil.which(self.argv[0]) is not None

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        if not self.available():
            raise HostWriteError(
                f"cannot manage the loopback guard: {self.argv[0]} is not installed", hint=INSTALL_HINT
            )
        return proc.run(
            [*self.argv, "-w", WAIT_SECONDS, "-t", TABLE, *args],
            timeout=TIMEOUT,
            hint=f"check the raw table by hand: {shlex.join([*self.argv, '-t', TABLE, '-S', CHAIN])}",
        )

    def listing(self) -> str:
        return self.run("-S", CHAIN).stdout or ""

    def backend(self) -> str:
        """The backend, as `iptables --version` names it: iptables-nft or iptables-legacy (else: iptables).

        Only words for the plan and the status line: no check depends on them. Debian's iptables (through
        update-alternatives, as on most distributions) is a link to its backend's multi-call binary,
        xtables-nft-multi or xtables-legacy-multi, which is what `--version` reports from: the link's target names
        the backend without starting a process. Any other layout (or a prefix such as `ip netns exec`) is asked."""
        found = shutil.which(self.argv[0]) if len(self.argv) == 1 else None
        target = os.path.basename(os.path.realpath(found)) if found else ""
        if target.startswith("xtables-nft"):
            return "iptables-nft"
        if target.startswith("xtables-legacy"):
            return "iptables-legacy"
        try:
            out = proc.run([*self.argv, "--version"], timeout=TIMEOUT, check=False).stdout or ""
        except CommandError:
            return "iptables"
        if "nf_tables" in out:
            return "iptables-nft"
        if "legacy" in out:
            return "iptables-legacy"
        return "iptables"


HOST = Iptables()


def is_root() -> bool:
    return os.geteuid() == 0


# ---------------------------------------------------------------- rules


@dataclass(frozen=True)
class Rule:
    """One rule in raw PREROUTING, reduced to what tells ours apart: compared by value."""

    dest: str  # "127.0.0.1/32"
    iface: str  # "!lo" (not from lo) or "loopback0"
    proto: str
    dport: int
    target: str  # "DROP" or "ACCEPT"
    comment: str

    def args(self) -> list[str]:
        """The rule's options, in the order `iptables -S` prints them."""
        iface = ["!", "-i", self.iface[1:]] if self.iface.startswith("!") else ["-i", self.iface]
        return [
            "-d",
            self.dest,
            *iface,
            "-p",
            self.proto,
            "-m",
            self.proto,
            "--dport",
            str(self.dport),
            "-m",
            "comment",
            "--comment",
            self.comment,
            "-j",
            self.target,
        ]


@dataclass(frozen=True)
class Listed:
    """A line of `iptables -S PREROUTING`: its options as printed (used to delete exactly it), and the rule."""

    tokens: tuple[str, ...]
    rule: Rule | None  # None: not a rule shape renderdev makes


def comment_for(project: str, service: str) -> str:
    return f"{COMMENT_PREFIX}:{project}:{service}"


def owner(comment: str) -> tuple[str, str] | None:
    """(project, service) of a renderdev guard comment, else None."""
    prefix, _, rest = comment.partition(":")
    project, _, service = rest.partition(":")
    if prefix != COMMENT_PREFIX or not project or not service:
        return None
    return project, service


def wsl2_mirrored(sys_net: Path = Path("/sys/class/net"), wslinfo: Path = WSLINFO) -> bool:
    """Docker's own test for WSL2's mirrored networking: a loopback0 link and an executable wslinfo."""
    return (sys_net / WSL_LOOPBACK).exists() and wslinfo.is_file() and os.access(wslinfo, os.X_OK)


def wanted_rules(settings: Settings, *, mirrored: bool) -> list[Rule]:
    """The rules that guard the settings' stack: per service port, the DROP (after an ACCEPT for loopback0
    under WSL2's mirrored networking)."""
    rules = []
    for service, key in PORT_SETTINGS.items():
        port = int(getattr(settings, key))
        comment = comment_for(settings.project, service)
        dest = f"{settings.bind_host}/32"
        if mirrored:
            rules.append(Rule(dest, WSL_LOOPBACK, "tcp", port, "ACCEPT", comment))
        rules.append(Rule(dest, "!lo", "tcp", port, "DROP", comment))
    return rules


def parse_listing(text: str, chain: str = CHAIN) -> list[Listed]:
    """The `-A <chain> ...` lines of `iptables -S`. Options renderdev never uses make the rule None."""
    found = []
    for line in text.splitlines():
        parts = shlex.split(line)
        if parts[:2] != ["-A", chain]:
            continue
        tokens = tuple(parts[2:])
        found.append(Listed(tokens, _rule(tokens)))
    return found


_KNOWN = {"-d", "-i", "-p", "-m", "--dport", "--comment", "-j"}


def _rule(tokens: tuple[str, ...]) -> Rule | None:
    opts: dict[str, str] = {}
    modules: list[str] = []
    negate = False
    it = iter(tokens)
    for tok in it:
        if tok == "!":
            negate = True
            continue
        if tok not in _KNOWN:
            return None
        value = next(it, None)
        if value is None:
            return None
        if tok == "-m":
            modules.append(value)
        elif (negate and tok != "-i") or tok in opts:
            return None
        else:
            opts[tok] = ("!" if negate else "") + value
        negate = False
    try:
        rule = Rule(opts["-d"], opts["-i"], opts["-p"], int(opts["--dport"]), opts["-j"], opts["--comment"])
    except (KeyError, ValueError):
        return None
    return rule if sorted(modules) == sorted([rule.proto, "comment"]) else None


def ours(listing: list[Listed], project: str) -> list[Listed]:
    """The listed rules whose comment names this project (whatever their shape)."""
    mine = []
    for item in listing:
        comment = _comment_of(item.tokens)
        who = owner(comment) if comment is not None else None
        if who is not None and who[0] == project:
            mine.append(item)
    return mine


def _comment_of(tokens: tuple[str, ...]) -> str | None:
    for i, tok in enumerate(tokens[:-1]):
        if tok == "--comment":
            return tokens[i + 1]
    return None


@dataclass(frozen=True)
class Diff:
    add: list[Rule]
    remove: list[Listed]  # this project's rules that are not wanted (another port, a duplicate, an odd shape)
    present: list[Rule]

    @property
    def empty(self) -> bool:
        return not self.add and not self.remove


def diff(listing: list[Listed], project: str, wanted: list[Rule]) -> Diff:
    mine = ours(listing, project)
    present: list[Rule] = []
    remove: list[Listed] = []
    for item in mine:
        if item.rule is not None and item.rule in wanted and item.rule not in present:
            present.append(item.rule)
        else:
            remove.append(item)
    # An ACCEPT is inserted at the top of the chain (apply_guard), so it is always before the DROPs.
    return Diff([r for r in wanted if r not in present], remove, present)


# ---------------------------------------------------------------- engine


def engine_major(version: str) -> int | None:
    m = _MAJOR.match(version.strip())
    return int(m.group(1)) if m else None


def guard_needed(version: str) -> bool:
    """True for an engine before 28, and for one whose version cannot be read (a guard never hurts)."""
    major = engine_major(version)
    return major is None or major < GUARDED_SINCE


# ---------------------------------------------------------------- plan, apply, check, remove


def _ports(rules: list[Rule]) -> str:
    seen = sorted({(r.dport, owner(r.comment) or ("?", "?")) for r in rules if r.target == "DROP"})
    return ", ".join(f"{port} ({who[1]})" for port, who in seen) or "none"


def _exposure(version: str, settings: Settings) -> str:
    return (
        f"Docker engine {version} (< {GUARDED_SINCE}) lets a machine on the local network reach ports"
        f" published on {settings.bind_host}"
    )


def plan_guard(
    client: docker.DockerClient, settings: Settings, *, iptables: Iptables = HOST, dry_run: bool = False
) -> Step:
    """The guard's step: ok when the engine guards itself or the rules are in place, else what changes.

    Without root the rules cannot even be read: a dry run shows the step, a real run stops here, before
    anything was changed, naming the command to run instead.
    """
    version = engine_version(client)
    needed = guard_needed(version)
    if not is_root():
        if not needed:
            return Step(COMPONENT, TITLE, StepState.OK, f"not needed: Docker engine {version} guards loopback ports")
        why = f"{_exposure(version, settings)}; reading and adding iptables rules needs root"
        if dry_run:
            return Step(COMPONENT, TITLE, StepState.CHANGE, f"{why}: run sudo -E invoke setup")
        raise HostWriteError(why, hint="re-run as root: sudo -E invoke setup")
    mirrored = wsl2_mirrored()
    wanted = wanted_rules(settings, mirrored=mirrored) if needed else []
    change = diff(parse_listing(iptables.listing()), settings.project, wanted)
    backend = iptables.backend()
    if change.empty:
        if not needed:
            return Step(COMPONENT, TITLE, StepState.OK, f"not needed: Docker engine {version} guards loopback ports")
        return Step(COMPONENT, TITLE, StepState.OK, f"DROP rules for ports {_ports(change.present)} ({backend})")
    if needed:
        detail = f"{_exposure(version, settings)}: add DROP rules for ports {_ports(change.add)} ({backend})"
    else:
        detail = f"Docker engine {version} guards loopback ports itself: remove renderdev's rules"
    if change.remove and needed:
        detail += f"; remove {len(change.remove)} outdated rule(s) of project {settings.project}"
    return Step(
        COMPONENT,
        TITLE,
        StepState.CHANGE,
        detail,
        apply=lambda: apply_guard(settings, wanted, iptables=iptables),
    )


def apply_guard(settings: Settings, wanted: list[Rule], *, iptables: Iptables = HOST) -> str:
    """Make this project's rules exactly `wanted` (read again now); say what changed."""
    change = diff(parse_listing(iptables.listing()), settings.project, wanted)
    for item in change.remove:
        iptables.run("-D", CHAIN, *item.tokens)
    for rule in change.add:
        if rule.target == "ACCEPT":
            iptables.run("-I", CHAIN, "1", *rule.args())
        else:
            iptables.run("-A", CHAIN, *rule.args())
    done = []
    if change.add:
        done.append(f"added DROP rules for ports {_ports(change.add)}")
    if change.remove:
        done.append(f"removed {len(change.remove)} rule(s) of project {settings.project}")
    return f"{'; '.join(done) or 'already right'} in {TABLE} {CHAIN} ({iptables.backend()})"


def check_guard(client: docker.DockerClient, settings: Settings, *, iptables: Iptables = HOST) -> list[Check]:
    """`invoke status` line: the engine guards itself, or every port of the stack has its DROP rule."""
    version = engine_version(client)
    if not guard_needed(version):
        return [Check(CHECK_NAME, True, f"not needed: Docker engine {version} guards loopback ports itself")]
    if not is_root():
        return [
            Check(
                CHECK_NAME,
                False,
                f"{_exposure(version, settings)}; only root can read the iptables rules that guard them",
                "sudo -E invoke status",
            )
        ]
    if not iptables.available():
        return [Check(CHECK_NAME, False, f"{iptables.argv[0]} is not installed", INSTALL_HINT)]
    change = diff(parse_listing(iptables.listing()), settings.project, wanted_rules(settings, mirrored=wsl2_mirrored()))
    if change.add:
        return [
            Check(
                CHECK_NAME,
                False,
                f"no DROP rule for ports {_ports(change.add)}: {_exposure(version, settings)}",
                "invoke setup",
            )
        ]
    return [Check(CHECK_NAME, True, f"DROP rules for ports {_ports(change.present)} in {TABLE} {CHAIN}")]


def remove_guard(client: docker.DockerClient, settings: Settings, *, iptables: Iptables = HOST) -> str:
    """`invoke down --all`: remove this project's rules (whatever the engine's version), and no other."""
    if not is_root():
        if not guard_needed(engine_version(client)):
            return "loopback guard: not needed with this engine (not checked for old rules: that needs root)"
        raise HostWriteError(
            f"cannot remove the loopback guard of project {settings.project}: reading iptables rules needs root",
            hint="sudo -E invoke down --all",
        )
    if not iptables.available():
        return f"loopback guard: nothing to remove ({iptables.argv[0]} is not installed)"
    removed = remove_project_rules(settings.project, iptables=iptables)
    if not removed:
        return f"loopback guard: no rules of project {settings.project}"
    return f"loopback guard: removed {removed} rule(s) of project {settings.project} from {TABLE} {CHAIN}"


def remove_project_rules(project: str, *, iptables: Iptables = HOST) -> int:
    """Delete each rule whose comment names `project` (exactly as listed); return how many. Needs root."""
    mine = ours(parse_listing(iptables.listing()), project)
    for item in mine:
        iptables.run("-D", CHAIN, *item.tokens)
    return len(mine)
