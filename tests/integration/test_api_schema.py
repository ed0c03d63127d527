"""The API answers only what its OpenAPI schema documents: schemathesis generates requests from the live
schema (valid ones and broken ones: wrong types, missing fields, out-of-range values, odd path ids) and sends
them, as a new user would (a fresh user with no credits, and their token; a worker's routes with a worker token made
by `invoke worker-config`), to an isolated stack's API. A 500,
a status the operation does not document, a body that breaks its documented model, a wrong content type or
an undocumented header fails the test; so does an operation that answers without its token.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from docker import DockerClient
from hypothesis import HealthCheck, settings
from rich.console import Console
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from provisioner.config import Settings
from provisioner.services import api_url
from provisioner.worker_access import worker_config
from renderfarm.settings import WorkerAccess
from tests.stackutil import User, isolated_stack, new_user, small_scene

pytestmark = pytest.mark.integration
EXAMPLES = 60  # per operation and phase


@pytest.fixture(scope="module")
def stack(
    docker_client: DockerClient,
    project_images: Settings,
    host_blender: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Settings]:
    with isolated_stack(docker_client, tmp_path_factory.mktemp("schema"), blender_link=host_blender) as settings:
        yield settings


@pytest.fixture(scope="module")
def newcomer(stack: Settings) -> User:
    return new_user(stack)


@pytest.fixture(scope="module")
def worker_headers(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    path = worker_config(
        stack, Console(quiet=True), name="schema", output=tmp_path_factory.mktemp("worker") / "worker.json"
    )
    return {"Authorization": f"Bearer {WorkerAccess.from_file(path).token}"}


def streams(ctx: Any) -> bool:
    """An operation that answers an endless event stream: a request/response fuzzer cannot read it to its end
    (renderfarm/page.py's own tests cover it)."""
    success = ctx.operation.definition.raw.get("responses", {}).get("200", {})
    return "text/event-stream" in success.get("content", {})


@pytest.fixture(scope="module")
def api_schema(stack: Settings) -> schemathesis.schemas.BaseSchema:
    return schemathesis.openapi.from_url(f"{api_url(stack)}/openapi.json", timeout=30)


schema = schemathesis.pytest.from_fixture("api_schema").exclude(streams)


CHECKS = [
    not_a_server_error,  # any 5xx: the stack is healthy throughout, so even a documented 503 would be wrong
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    ignored_auth,
]


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_every_answer_is_documented_and_none_is_a_500(
    case: schemathesis.Case, newcomer: User, worker_headers: dict[str, str]
) -> None:
    headers = worker_headers if case.path.startswith("/worker/") else newcomer.headers
    case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)


def test_a_new_users_own_job_and_balance_match_their_documented_models(
    api_schema: schemathesis.schemas.BaseSchema, newcomer: User
) -> None:
    """The answers random ids and emails cannot reach: the user's own job (200, then 409 for its image), their
    balance (200), an HD render they cannot pay for (402)."""
    post = api_schema["/renders"]["POST"]
    for quality, status in (("preview", 202), ("hd", 402)):
        case = post.Case(body={"quality": quality, "scene": small_scene()}, media_type="application/json")
        response = case.call_and_validate(headers=newcomer.headers, checks=CHECKS, timeout=30)
        assert response.status_code == status, response.text
        if status == 202:
            mjid = response.json()["mjid"]
    for path, params, status in (
        ("/renders/{mjid}", {"mjid": mjid}, 200),
        ("/renders/{mjid}/image", {"mjid": mjid}, 409),
        ("/users/{email}/credits", {"email": newcomer.email}, 200),
    ):
        case = api_schema[path]["GET"].Case(path_parameters=params)
        response = case.call_and_validate(headers=newcomer.headers, checks=CHECKS, timeout=30)
        assert response.status_code == status, f"{path}: {response.text}"
