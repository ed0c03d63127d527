"""The loopback guard's pure parts: reading `iptables -S`, telling renderdev's rules from everyone else's, the
difference to the wanted rules, and the decisions that depend on the engine's version and on root.

The engine is a stand-in answering `version()`: an engine of version 28 does not run on this host."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest

from provisioner import firewall
from provisioner.config import load_settings
from provisioner.errors import HostWriteError
from provisioner.firewall import (
    Iptables,
    Rule,
    comment_for,
    diff,
    engine_major,
    guard_needed,
    owner,
    parse_listing,
    wanted_rules,
    wsl2_mirrored,
)

# As iptables-nft 1.8.9 prints them (comments quoted), with Docker's own rules and a foreign one around ours.
_M = "-A PREROUTING -d 127.0.0.1/32 ! -i lo -p tcp -m tcp --dport"
_C = '-m comment --comment "renderdev-loopback-guard'
NFT_LISTING = "\n".join(
    [
        "-P PREROUTING ACCEPT",
        "-A PREROUTING -d 172.18.0.2/32 ! -i br-4714c9dc395f -j DROP",
        f'{_M} 6379 {_C}:p1:redis" -j DROP',
        f'{_M} 5432 {_C}:p1:db" -j DROP',
        f'{_M} 7000 {_C}:p1:api" -j DROP',
        f'{_M} 6380 {_C}:p2:redis" -j DROP',
        f'{_M} 8000 -m comment --comment "someone else\'s" -j DROP',
        "",
    ]
)


def settings(**over: Any) -> Any:
    values: dict[str, Any] = dict(project="p1", redis_port=6379, db_port=5432, api_port=8000)
    values.update(over)
    return load_settings(**values)


class Engine:
    """Answers `version()` as docker-py's client does (only the key the guard reads)."""

    def __init__(self, version: str) -> None:
        self._version = version

    def version(self) -> dict[str, str]:
        return {"Version": self._version}


def test_engine_versions_before_28_need_the_guard() -> None:
    assert engine_major("20.10.24+dfsg1") == 20
    assert engine_major("v28.0.1") == 28
    assert engine_major("nonsense") is None
    assert guard_needed("20.10.24+dfsg1") and guard_needed("27.5.1")
    assert not guard_needed("28.0.0") and not guard_needed("29.1.3")
    assert guard_needed("?"), "an engine whose version cannot be read gets the guard (it never hurts)"


class CountingEngine(Engine):
    def __init__(self, version: str) -> None:
        super().__init__(version)
        self.asked = 0

    def version(self) -> dict[str, str]:
        self.asked += 1
        return super().version()


def test_each_client_is_asked_its_engine_version_once() -> None:
    first: Any = CountingEngine("20.10.24+dfsg1")
    second: Any = CountingEngine("28.0.1")
    assert [firewall.engine_version(first) for _ in range(3)] == ["20.10.24+dfsg1"] * 3
    assert firewall.engine_version(second) == "28.0.1", "another client (another engine) is asked itself"
    assert (first.asked, second.asked) == (1, 1)


@pytest.mark.parametrize(
    ("name", "backend"),
    [("iptables-nft", "iptables-nft"), ("iptables-legacy", "iptables-legacy"), ("iptables", None)],
)
def test_the_backend_named_by_the_link_is_the_one_iptables_reports(name: str, backend: str | None) -> None:
    """The plan names the backend from the link's target (xtables-nft-multi, xtables-legacy-multi) without starting
    iptables; `iptables --version`, which a prefixed command (here `env NAME`) is still asked, says the same."""
    by_link = Iptables((name,)).backend()
    assert by_link == Iptables(("env", name)).backend()
    assert by_link == (backend or by_link) and by_link in ("iptables-nft", "iptables-legacy")


def test_listing_is_parsed_and_only_renderdev_comments_are_owned() -> None:
    listed = parse_listing(NFT_LISTING)
    assert len(listed) == 6  # the policy line is not a rule
    assert listed[0].rule is None, "Docker's direct-access rule has no comment: not a renderdev shape"
    assert listed[1].rule == Rule("127.0.0.1/32", "!lo", "tcp", 6379, "DROP", "renderdev-loopback-guard:p1:redis")
    assert owner("renderdev-loopback-guard:p1:redis") == ("p1", "redis")
    assert owner("someone else's") is None
    assert owner("renderdev-loopback-guard:p1") is None
    assert [i.rule.dport for i in firewall.ours(listed, "p1") if i.rule] == [6379, 5432, 7000]
    assert [i.rule.dport for i in firewall.ours(listed, "p2") if i.rule] == [6380]


def test_the_rule_renderdev_adds_reads_back_as_the_same_rule() -> None:
    for rule in wanted_rules(settings(), mirrored=True):
        line = "-A PREROUTING " + shlex.join(rule.args())
        (item,) = parse_listing(line)
        assert item.rule == rule
    # Docker 28's match, plus our comment
    drop = wanted_rules(settings(), mirrored=False)[0]
    assert drop.args()[:9] == ["-d", "127.0.0.1/32", "!", "-i", "lo", "-p", "tcp", "-m", "tcp"]
    assert drop.args()[-2:] == ["-j", "DROP"]


def test_diff_adds_the_missing_port_and_removes_only_this_projects_outdated_rule() -> None:
    listed = parse_listing(NFT_LISTING)
    change = diff(listed, "p1", wanted_rules(settings(), mirrored=False))  # api moved from 7000 to 8000
    assert [r.dport for r in change.add] == [8000]
    assert [i.rule.dport for i in change.remove if i.rule] == [7000]
    assert sorted(r.dport for r in change.present) == [5432, 6379]
    # p2's rule and the foreign one for port 8000 are neither present for p1 nor removed
    assert all(owner(firewall._comment_of(i.tokens) or "") == ("p1", "api") for i in change.remove)


def test_diff_of_a_complete_guard_is_empty_and_a_duplicate_is_removed() -> None:
    wanted = wanted_rules(settings(api_port=7000), mirrored=False)
    assert diff(parse_listing(NFT_LISTING), "p1", wanted).empty
    doubled = NFT_LISTING + NFT_LISTING.splitlines()[2] + "\n"
    change = diff(parse_listing(doubled), "p1", wanted)
    assert not change.add and len(change.remove) == 1


def test_a_rule_of_ours_with_an_unexpected_shape_is_replaced() -> None:
    odd = f'-A PREROUTING -s 10.0.0.0/8 -d 127.0.0.1/32 -p tcp -m tcp --dport 6379 {_C}:p1:redis" -j DROP'
    (item,) = parse_listing(odd)
    assert item.rule is None
    change = diff([item], "p1", wanted_rules(settings(), mirrored=False))
    assert change.remove == [item] and len(change.add) == 3


def test_wsl2_mirrored_networking_puts_an_accept_for_loopback0_before_each_drop(tmp_path: Path) -> None:
    net = tmp_path / "net"
    (net / "loopback0").mkdir(parents=True)
    wslinfo = tmp_path / "wslinfo"
    assert not wsl2_mirrored(net, wslinfo)
    wslinfo.write_text("#!/bin/sh\n")
    assert not wsl2_mirrored(net, wslinfo), "not executable: not WSL's"
    wslinfo.chmod(0o755)
    assert wsl2_mirrored(net, wslinfo)
    assert not wsl2_mirrored(tmp_path / "no-net", wslinfo)
    rules = wanted_rules(settings(), mirrored=True)
    assert [(r.iface, r.target) for r in rules[:2]] == [("loopback0", "ACCEPT"), ("!lo", "DROP")]
    assert len(rules) == 6


def test_engine_28_needs_nothing_even_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(firewall, "is_root", lambda: False)
    step = firewall.plan_guard(Engine("28.0.1"), settings())
    assert not step.needed and "not needed" in step.detail
    (check,) = firewall.check_guard(Engine("28.0.1"), settings())
    assert check.ok and "not needed" in check.state


def test_without_root_setup_stops_before_changing_anything_and_names_sudo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(firewall, "is_root", lambda: False)
    engine: Any = Engine("20.10.24+dfsg1")
    step = firewall.plan_guard(engine, settings(), dry_run=True)
    assert step.needed and "sudo -E invoke setup" in step.detail and "20.10.24" in step.detail
    with pytest.raises(HostWriteError) as err:
        firewall.plan_guard(engine, settings())
    assert err.value.hint == "re-run as root: sudo -E invoke setup"
    (check,) = firewall.check_guard(engine, settings())
    assert not check.ok and check.fix == "sudo -E invoke status"
    with pytest.raises(HostWriteError) as err:
        firewall.remove_guard(engine, settings())
    assert err.value.hint == "sudo -E invoke down --all"


def test_missing_iptables_is_named_with_the_package_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(firewall, "is_root", lambda: True)
    missing = firewall.Iptables(("renderdev-no-such-iptables",))
    engine: Any = Engine("20.10.24+dfsg1")
    with pytest.raises(HostWriteError) as err:
        firewall.plan_guard(engine, settings(), iptables=missing)
    assert "renderdev-no-such-iptables is not installed" in err.value.message
    assert "apt-get install iptables" in (err.value.hint or "")
    (check,) = firewall.check_guard(engine, settings(), iptables=missing)
    assert not check.ok and "apt-get install iptables" in check.fix


def test_comment_names_project_and_service() -> None:
    assert comment_for("mystack", "api") == "renderdev-loopback-guard:mystack:api"
