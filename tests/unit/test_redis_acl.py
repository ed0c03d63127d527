"""provisioner.redis_acl without Redis: worker names are checked against an allow-list, and the rules stay on rq's
keys and channels (what the rules let an rq worker do is tested against the real image in
tests/integration/test_redis_acl.py)."""

from __future__ import annotations

import pytest

from provisioner.errors import ConfigError
from provisioner.redis_acl import worker_rules, worker_user


@pytest.mark.parametrize("name", ["gpu-01", "a", "0", "x" * 40, "render-node-7"])
def test_a_worker_name_becomes_its_redis_user(name: str) -> None:
    assert worker_user(name) == f"worker-{name}"


@pytest.mark.parametrize("name", ["", "-a", "A", "gpu_01", "x" * 41, "a:b", "a*", "on >x", "a b", "../x", "a\nb"])
def test_a_name_off_the_allow_list_is_refused_naming_it(name: str) -> None:
    with pytest.raises(ConfigError) as raised:
        worker_user(name)
    assert repr(name) in str(raised.value)


def test_the_rules_reach_rq_only() -> None:
    rules = worker_rules()
    assert [r for r in rules if r[0] in "~%"] == ["~rq:*"]
    assert [r for r in rules if r[0] == "&"] == ["&rq:*"]
    assert rules.index("-@all") < min(i for i, r in enumerate(rules) if r.startswith("+"))
    assert [r for r in rules if r.startswith("+@")] == ["+@transaction"]
    forbidden = {"+keys", "+flushall", "+flushdb", "+config", "+acl", "+debug", "+eval", "+evalsha", "+info", "+scan"}
    assert not forbidden & set(rules)
    assert not any(r.startswith("-") and r != "-@all" for r in rules)
