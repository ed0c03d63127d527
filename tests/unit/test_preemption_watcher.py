"""The preemption watcher against a loopback metadata server as strict as the clouds' (tests/fake_metadata.py):
AWS requires an IMDSv2 session token on every request, GCP its Metadata-Flavor header."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from renderfarm.worker.preemption import PreemptionWatcher
from tests.fake_metadata import MetadataState, metadata_server

AWS = "/latest/meta-data/spot/instance-action"
AWS_NOTICE = b'{"action": "terminate", "time": "2026-11-29T15:00:00Z"}'
GCP = "/computeMetadata/v1/instance/preempted"


@contextmanager
def watching(url: str, **kwargs: int) -> Iterator[tuple[PreemptionWatcher, threading.Event]]:
    noticed = threading.Event()
    watcher = PreemptionWatcher(url, 0.05, on_notice=noticed.set, **kwargs)
    watcher.start()
    try:
        yield watcher, noticed
    finally:
        watcher.stop()
        watcher.join(timeout=5)


def polls(state: MetadataState, n: int) -> None:
    """Wait until the server has answered n more GETs."""
    with state.lock:
        target = state.gets + n
    for _ in range(200):
        with state.lock:
            if state.gets >= target:
                return
        threading.Event().wait(0.05)
    raise AssertionError(f"the watcher made fewer than {n} more requests in 10 s")


def test_aws_polls_with_an_imdsv2_token_and_sees_the_notice() -> None:
    with metadata_server(AWS, AWS_NOTICE) as (url, state), watching(url) as (watcher, noticed):
        polls(state, 5)
        assert not noticed.is_set()  # 404: no notice yet
        state.notice.set()
        assert noticed.wait(5), "the watcher did not see the notice"
        assert watcher.noticed.is_set()
    assert state.refused == 0, "a request went out without a valid token"
    assert state.token_puts == 1  # one token for the whole run (it lives 21600 s)


def test_aws_token_revoked_is_renewed_on_the_401() -> None:
    with metadata_server(AWS, AWS_NOTICE) as (url, state), watching(url) as (_, noticed):
        polls(state, 3)
        state.revoke_tokens()
        state.notice.set()
        assert noticed.wait(5), "the watcher did not renew its token after a 401"
    assert state.token_puts == 2 and state.refused == 1


def test_aws_token_is_renewed_before_it_expires() -> None:
    with metadata_server(AWS, AWS_NOTICE) as (url, state), watching(url, token_ttl=1) as (_, noticed):
        polls(state, 40)  # 0.05 s apart: about 2 s, two token lifetimes
        assert not noticed.is_set()
    assert state.token_puts >= 3
    assert state.refused == 0, "the token was used after it expired"


def test_gcp_sends_metadata_flavor_and_sees_true() -> None:
    with metadata_server(GCP, b"TRUE") as (url, state), watching(url) as (_, noticed):
        polls(state, 3)
        assert not noticed.is_set()  # FALSE
        state.notice.set()
        assert noticed.wait(5)
    assert state.refused == 0 and state.token_puts == 0


@pytest.mark.parametrize("url", ["http://127.0.0.1:1/latest/meta-data/spot/instance-action", "http://127.0.0.1:1/x"])
def test_an_endpoint_that_does_not_answer_is_polled_again_quietly(url: str) -> None:
    with watching(url) as (watcher, noticed):
        threading.Event().wait(0.3)
        assert watcher.is_alive() and not noticed.is_set()
