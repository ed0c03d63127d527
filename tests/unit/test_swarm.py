"""`invoke deploy` without Docker: placement of pq and sq, the registry's address, the counts, the secret's name,
the desired service spec against `docker service inspect`'s, the registry-only first deploy, and the plan itself on
a fake engine (a loopback HTTP server stands in for the registry): the same numbers give no change."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner.config import Settings, load_settings
from provisioner.errors import ConfigError, DockerError
from provisioner.swarm import (
    PREEMPTIBLE_LABEL,
    SPEC_LABEL,
    Facts,
    Node,
    ServiceSpec,
    _registry_spec,
    _Resolved,
    check_placement,
    differences,
    parse_count,
    placement,
    plan_stack,
    registry_host,
    registry_only,
    secret_name,
    service_name,
    spec_digest,
    spec_of,
    stack_file,
    stack_name,
    stack_variables,
    worker_repository,
)

DIGEST = "sha256:" + "ab" * 32


def node(i: int, preemptible: bool = False, availability: str = "active") -> Node:
    return Node(f"id{i}", f"host{i}", "worker", availability, preemptible)


# ---------------------------------------------------------------- pure parts


def test_a_one_node_swarm_runs_pq_and_sq_on_its_node() -> None:
    where = placement([node(1)])
    assert where.pq == where.sq == "node.id == id1"
    check_placement([node(1)], 3, 3)  # nothing to refuse: both kinds on the one node


def test_several_nodes_put_pq_on_the_labelled_ones_and_sq_on_the_others() -> None:
    where = placement([node(1, True), node(2), node(3)])
    assert where.pq == f"node.labels.{PREEMPTIBLE_LABEL} == true"
    assert where.sq == f"node.labels.{PREEMPTIBLE_LABEL} != true"
    assert "pq on the 1 labelled" in where.note and "sq on the other 2" in where.note


def test_a_service_with_no_node_to_run_on_is_refused_naming_the_label_command() -> None:
    with pytest.raises(ConfigError) as err:
        check_placement([node(1), node(2)], 1, 0)
    assert "--preemptible 1" in err.value.message and "docker node update --label-add" in str(err.value.hint)
    with pytest.raises(ConfigError) as err:
        check_placement([node(1, True), node(2, True), node(3, availability="drain")], 0, 2)
    assert "--standard 2" in err.value.message and "--label-rm" in str(err.value.hint)
    check_placement([node(1, True), node(2)], 1, 1)
    check_placement([node(1), node(2)], 0, 2)  # no pq wanted: no label needed


@pytest.mark.parametrize(
    ("addr", "count", "want"),
    [("10.0.0.5", 1, "127.0.0.1"), ("10.0.0.5", 3, "10.0.0.5"), ("127.0.0.1", 3, "127.0.0.1"), ("", 2, "127.0.0.1")],
)
def test_the_registry_is_reached_on_loopback_unless_other_nodes_pull_from_it(addr: str, count: int, want: str) -> None:
    assert registry_host(addr, count) == want


def test_counts_from_0_to_64_and_others_refused_naming_option_and_value() -> None:
    assert parse_count(None, "--preemptible") == 0
    assert parse_count(" 3 ", "--standard") == 3
    for bad in ("-1", "65", "two", "1.5"):
        with pytest.raises(ConfigError) as err:
            parse_count(bad, "--standard")
        assert f"--standard {bad!r}" in err.value.message


def test_the_secret_name_carries_the_worker_files_digest() -> None:
    one, two = secret_name("p-swarm", b'{"a": 1}'), secret_name("p-swarm", b'{"a": 2}')
    assert one == "p-swarm-worker-" + hashlib.sha256(b'{"a": 1}').hexdigest()[:12]
    assert one != two and secret_name("p-swarm", b'{"a": 1}') == one  # same file, same secret: rotation is a new one
    with pytest.raises(ConfigError) as err:
        secret_name("p" * 60 + "-swarm", b"x")
    assert "64 characters" in err.value.message


def inspected(replicas: int, image: str, secret: str | None, spec: str) -> dict[str, Any]:
    """A service as `docker service inspect` shows one (the parts spec_of reads)."""
    container: dict[str, Any] = {"Image": image}
    if secret:
        container["Secrets"] = [{"SecretName": secret, "SecretID": "x", "File": {"Name": "worker_config"}}]
    return {
        "Spec": {
            "Name": "s_pq",
            "Labels": {SPEC_LABEL: spec, "com.docker.stack.namespace": "s"},
            "Mode": {"Replicated": {"Replicas": replicas}},
            "TaskTemplate": {"ContainerSpec": container},
        }
    }


def test_the_desired_spec_is_compared_with_the_inspected_one() -> None:
    image = f"127.0.0.1:5000/renderdev/worker:dev@{DIGEST}"
    desired = ServiceSpec("s_pq", 2, image, "s-worker-1", "spec1")
    assert spec_of(inspected(2, image, "s-worker-1", "spec1")) == desired
    assert differences(desired, spec_of(inspected(2, image, "s-worker-1", "spec1"))) == []
    assert differences(desired, spec_of(inspected(1, image, "s-worker-1", "spec1"))) == ["replicas 1 -> 2"]
    other = differences(
        desired, spec_of(inspected(2, "127.0.0.1:5000/renderdev/worker:dev@sha256:cd", "s-worker-0", "x"))
    )
    assert [d.split(" ")[0] for d in other] == ["image", "secret", "stack"], other
    assert differences(desired, None) == ["create with 2 replica(s)"]


def test_the_spec_digest_covers_the_file_and_settings_but_not_what_is_compared_one_by_one() -> None:
    base = {"RENDERDEV_PQ_REPLICAS": "1", "RENDERDEV_WORKER_IMAGE": "a", "RENDERDEV_WARM_BLENDER": "true"}
    same = {**base, "RENDERDEV_PQ_REPLICAS": "5", "RENDERDEV_WORKER_IMAGE": "b", "RENDERDEV_REGISTRY_SPEC": "r"}
    assert spec_digest(b"file", base) == spec_digest(b"file", same)
    assert spec_digest(b"file", base) != spec_digest(b"file", {**base, "RENDERDEV_WARM_BLENDER": "false"})
    assert spec_digest(b"file", base) != spec_digest(b"file2", base)


def test_the_first_deploy_is_the_registry_alone() -> None:
    text = registry_only(stack_file(load_settings()).read_text())
    data = yaml.safe_load(text)
    assert list(data["services"]) == ["registry"] and "volumes" in data
    assert "RENDERDEV_WORKER" not in text  # nothing a worker needs is asked for yet


# ---------------------------------------------------------------- the plan on a fake engine


class _Registry(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200 if self.path == "/v2/" else 404)
        self.end_headers()

    def do_HEAD(self) -> None:  # noqa: N802
        self.send_response(200 if self.path.endswith(DIGEST) else 404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def registry() -> Iterator[int]:
    server = HTTPServer(("127.0.0.1", 0), _Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


class _Obj:
    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


class _FakeEngine:
    """The few calls plan_stack makes: images.get (the worker and registry images)."""

    def __init__(self, settings: Settings, repository: str) -> None:
        worker = _Obj(id="sha256:w", attrs={"RepoDigests": [f"{repository}@{DIGEST}"]})
        images = {settings.image("worker"): worker, settings.image("registry"): _Obj(id="sha256:r", attrs={})}
        self.images = _Obj(get=images.__getitem__)


def test_the_same_numbers_plan_no_change_and_other_numbers_name_the_change(tmp_path: Path, registry: int) -> None:
    settings = load_settings(project="unit", state_dir=tmp_path, registry_port=registry)
    stack = stack_name(settings)
    repository = worker_repository(settings, "127.0.0.1")
    client: Any = _FakeEngine(settings, repository)
    content = b'{"name": "swarm"}'
    secret = secret_name(stack, content)
    facts = Facts(True, True, "id1", "127.0.0.1", [node(1)], {}, {secret: object()})
    image = f"{repository}:{settings.image_tag}@{DIGEST}"
    registry_spec = _registry_spec(client, settings)
    variables = stack_variables(
        settings, facts, pq=1, sq=1, image=image, secret=secret, registry_spec=registry_spec, environ={}
    )
    spec = variables["RENDERDEV_SWARM_SPEC"]
    facts.services = {
        service_name(stack, "registry"): _Obj(attrs=inspected(1, settings.image("registry"), None, registry_spec)),
        service_name(stack, "pq"): _Obj(attrs=inspected(1, image, secret, spec)),
        service_name(stack, "sq"): _Obj(attrs=inspected(1, image, secret, spec)),
    }
    with pytest.MonkeyPatch.context() as mp:
        for name in ("RENDERFARM_PREVIEW_SAMPLES", "RENDERFARM_HD_SAMPLES"):
            mp.delenv(name, raising=False)
        steps = plan_stack(client, settings, _Resolved(facts, content=content), 1, 1)
        assert [s.needed for s in steps] == [False] * 5, [(s.title, s.detail) for s in steps if s.needed]

        steps = plan_stack(client, settings, _Resolved(facts, content=content), 2, 0)
        changed = [s for s in steps if s.needed]
        assert [s.title.split(" ")[0] for s in changed] == ["workers"], changed
        assert "pq: replicas 1 -> 2" in changed[0].detail and "sq: replicas 1 -> 0" in changed[0].detail

        rotated = plan_stack(client, settings, _Resolved(facts, content=b'{"name": "swarm", "new": 1}'), 1, 1)
        assert [s.title for s in rotated if s.needed] == [
            "worker file secret",
            f"workers {service_name(stack, 'pq')}=1, {service_name(stack, 'sq')}=1",
            "old worker file secrets",
        ]

        gone = replace(facts, services={})
        fresh = plan_stack(client, settings, _Resolved(gone, content=content), 1, 1)
        assert [s.needed for s in fresh] == [False, True, True, True, False]


def test_a_plan_without_the_worker_file_cannot_make_the_secret() -> None:
    from provisioner.swarm import _content

    with pytest.raises(DockerError):
        _content(_Resolved(Facts(True, True, "id1", "", [], {}, {})))
