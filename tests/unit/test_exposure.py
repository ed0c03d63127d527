"""Exposure (issue 11, results over the network): the address an exposure may use, the remembered choice, the CA and
server certificate (an IP subjectAltName, the chain, kept across re-runs, backdated), the compose files and variables
that publish only TLS on the address, and worker files of format renderdev-worker/2 (with the CA).

The TLS handshakes here run on 127.0.0.1 only: a server certificate made for 127.0.0.1 by the same code."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from provisioner import tls
from provisioner.compose import CONFIG_HASH_VAR, compose_env
from provisioner.config import Settings, load_settings
from provisioner.errors import ConfigError
from provisioner.exposure import (
    check_address,
    check_exposure,
    exposed_endpoints,
    host_addresses,
    remember,
    remembered,
)
from provisioner.worker_access import endpoints_for
from renderfarm.errors import RenderConfigError
from renderfarm.settings import WORKER_FILE_FORMAT, WORKER_FILE_FORMAT_TLS, WorkerAccess
from renderfarm.tls import ca_context, redis_tls_options

ADDRESS = "10.213.9.1"  # only ever a string here: nothing is sent to it
OTHER = "10.213.9.2"
HOST = ["127.0.0.1", "192.0.2.2", ADDRESS, OTHER]


def settings_in(tmp: Path, **over: Any) -> Settings:
    return load_settings(project="rdexpose", state_dir=tmp / "state", **over)


# ---------------------------------------------------------------- the address


def test_an_address_of_this_host_is_accepted() -> None:
    assert check_address(ADDRESS, HOST) == ADDRESS
    assert check_address(f" {ADDRESS} ", HOST) == ADDRESS
    assert "127.0.0.1" in host_addresses()  # the real listing (`ip -j -4 addr`)


@pytest.mark.parametrize(
    ("address", "words"),
    [
        ("127.0.0.1", "loopback"),
        ("127.3.4.5", "loopback"),
        ("0.0.0.0", "every address"),
        ("10.213.9.77", "not an address of this host"),
        ("gpu-box.local", "not an IPv4 address"),
        ("::1", "not an IPv4 address"),
        ("10.213.9", "not an IPv4 address"),
    ],
)
def test_a_bad_address_is_refused_naming_it_and_the_hosts_addresses(address: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_address(address, HOST)
    text = str(caught.value)
    assert address in text and words in text, text
    assert f"192.0.2.2, {ADDRESS}, {OTHER}" in text and "--expose none" in text, text
    assert "use one of this host's addresses: 127.0.0.1" not in text  # loopback is not offered


def test_the_choice_is_remembered_and_none_withdraws_it(tmp_path: Path) -> None:
    plain = settings_in(tmp_path)
    assert plain.exposed_address is None and remembered(plain) is None
    assert [p.name for p in plain.compose_files] == ["compose.yaml"]
    remember(plain, ADDRESS)
    assert json.loads(plain.expose_file.read_text()) == {"address": ADDRESS}
    later = settings_in(tmp_path)  # a run without --expose
    assert later.exposed_address == ADDRESS
    assert [p.name for p in later.compose_files] == ["compose.yaml", "expose.yaml"]
    for word in ("none", "None", " NONE "):
        assert settings_in(tmp_path, expose=word).exposed_address is None
    assert settings_in(tmp_path, expose=OTHER).exposed_address == OTHER


def test_status_says_when_the_remembered_address_is_gone(tmp_path: Path) -> None:
    (plain,) = check_exposure(None, settings_in(tmp_path))  # type: ignore[arg-type]
    assert plain.ok and "not exposed" in plain.state
    gone = settings_in(tmp_path, expose="10.213.250.250")  # an address this host does not have
    (check,) = check_exposure(None, gone)  # type: ignore[arg-type]
    assert not check.ok and "10.213.250.250" in check.state and "--expose none" in check.fix, check


# ---------------------------------------------------------------- certificates


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_the_ca_and_server_certificate_are_made_once_for_the_address(tmp_path: Path) -> None:
    s = settings_in(tmp_path)
    files = tls.tls_files(s)
    step = tls.plan_tls(s, ADDRESS)
    assert step.needed and "make a CA" in step.detail
    before = datetime.now(UTC)
    tls.ensure_tls(s, ADDRESS)
    ca, server = cert(files.ca_cert), cert(files.server_cert)

    assert tls.ip_sans(server) == [ADDRESS]
    assert tls.signed_by(server, ca) and tls.signed_by(ca, ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = serialization.load_pem_private_key(files.server_key.read_bytes(), password=None)
    assert key.public_key() == server.public_key()
    assert key.curve.name == "secp256r1"  # type: ignore[union-attr]
    # Backdated by an hour: a host whose clock is minutes behind accepts them at once.
    for c in (ca, server):
        assert c.not_valid_before_utc <= before - timedelta(minutes=59)
        assert c.not_valid_after_utc > before + timedelta(days=365)
    assert files.ca_key.stat().st_mode & 0o777 == 0o600
    assert files.server_key.stat().st_mode & 0o777 == 0o600
    assert files.folder.stat().st_mode & 0o777 == 0o700
    if os.getuid() == 0:  # the api-tls container reads it as the containers' user
        assert files.server_key.stat().st_uid == 10001

    # A re-run changes nothing: the same files, byte for byte.
    kept = {p.name: p.read_bytes() for p in files.folder.iterdir()}
    assert not tls.plan_tls(s, ADDRESS).needed
    assert tls.ensure_tls(s, ADDRESS) == "already in place"
    assert {p.name: p.read_bytes() for p in files.folder.iterdir()} == kept

    # Another address: a new server certificate, from the same CA (worker files keep trusting it).
    step = tls.plan_tls(s, OTHER)
    assert step.needed and f"it is for {ADDRESS}" in step.detail, step.detail
    tls.ensure_tls(s, OTHER)
    assert files.ca_cert.read_bytes() == kept["ca.crt"] and files.ca_key.read_bytes() == kept["ca.key"]
    assert tls.ip_sans(cert(files.server_cert)) == [OTHER] and tls.signed_by(cert(files.server_cert), ca)

    # A lost CA key: a new CA, and a server certificate it signed.
    files.ca_key.unlink()
    tls.ensure_tls(s, OTHER)
    assert files.ca_cert.read_bytes() != kept["ca.crt"]
    assert tls.signed_by(cert(files.server_cert), cert(files.ca_cert))


@contextmanager
def tls_server(tmp: Path, *, made: datetime | None = None) -> Iterator[tuple[int, str, str]]:
    """A TLS server on 127.0.0.1 with a certificate for 127.0.0.1 (made at `made`: now by default) from a CA of its own;
    yields (port, its CA, another CA). It answers one line to each handshake that succeeds."""
    ca_key, ca = tls.make_ca("loopback", now=made)
    key, server = tls.make_server_cert(ca_key, ca, "127.0.0.1", now=made)
    (tmp / "s.key").write_bytes(tls._key_pem(key))
    (tmp / "s.crt").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp / "s.crt", tmp / "s.key")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(20)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(conn, server_side=True) as tls_conn:
                    tls_conn.sendall(b"hello\n")
            except (OSError, ssl.SSLError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    other = tls.make_ca("other")[1].public_bytes(serialization.Encoding.PEM).decode()
    try:
        yield listener.getsockname()[1], ca.public_bytes(serialization.Encoding.PEM).decode(), other
    finally:
        stop.set()
        listener.close()
        thread.join(timeout=5)


@pytest.fixture
def loopback_server(tmp_path: Path) -> Iterator[tuple[int, str, str]]:
    with tls_server(tmp_path) as server:
        yield server


def handshake(port: int, ca: str, host: str = "127.0.0.1") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ca_context(ca).wrap_socket(raw, server_hostname=host) as conn:
            return conn.recv(10)


def test_a_worker_trusts_the_files_ca_alone_and_checks_the_ip(loopback_server: tuple[int, str, str]) -> None:
    port, ca, other = loopback_server
    assert handshake(port, ca) == b"hello\n"
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        handshake(port, other)  # a certificate from any other CA (the system's bundle is not loaded either)
    with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
        handshake(port, ca, host="127.0.0.2")  # the right CA, but not the address the certificate names
    assert ca_context(ca).cert_store_stats()["x509_ca"] == 1
    options = redis_tls_options(ca)
    assert options["ssl"] is True and options["ssl_ca_data"] == ca and options["ssl_check_hostname"] is True


SKEWED_CLIENT = r"""
import socket, sys
from renderfarm.tls import ca_context
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10) as raw:
    with ca_context(sys.argv[2]).wrap_socket(raw, server_hostname="127.0.0.1") as conn:
        print(conn.recv(10).decode().strip())
"""


def skewed_handshake(port: int, ca: str) -> subprocess.CompletedProcess[str]:
    """A worker's handshake from a host whose clock is 2 minutes behind (libfaketime, as tests/hosts' skewed host)."""
    faketime = shutil.which("faketime")
    assert faketime, "faketime is needed (scripts/install-host.sh installs it)"
    argv = [faketime, "-f", "-120s", sys.executable, "-c", SKEWED_CLIENT, str(port), ca]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_a_host_two_minutes_behind_accepts_a_certificate_made_just_now(tmp_path: Path) -> None:
    with tls_server(tmp_path) as (port, ca, _):
        done = skewed_handshake(port, ca)
        assert done.returncode == 0 and done.stdout.strip() == "hello", done.stderr
    # Without the hour of backdating (valid from the moment it is made) the same host refuses it: the test can tell.
    with tls_server(tmp_path, made=datetime.now(UTC) + tls.BACKDATE) as (port, ca, _):
        done = skewed_handshake(port, ca)
        assert done.returncode != 0 and "certificate is not yet valid" in done.stderr, done.stderr


# ---------------------------------------------------------------- what compose publishes


def test_compose_publishes_only_tls_on_the_address(tmp_path: Path) -> None:
    s = settings_in(tmp_path, expose=ADDRESS)
    tls.ensure_tls(s, ADDRESS)
    env = compose_env(s)
    assert env["RENDERDEV_EXPOSE_ADDRESS"] == ADDRESS and env["RENDERDEV_TLS_DIR"] == str(s.tls_dir)
    assert env["RENDERDEV_TLS_DIGEST"] == tls.server_cert_digest(s) != ""
    plain_env = compose_env(settings_in(tmp_path, expose="none"))
    assert "RENDERDEV_EXPOSE_ADDRESS" not in plain_env and plain_env[CONFIG_HASH_VAR] != env[CONFIG_HASH_VAR]
    tls.ensure_tls(s, OTHER)  # a new certificate: a new config hash, so compose recreates what mounts it
    assert compose_env(s.model_copy(update={"expose": OTHER}))[CONFIG_HASH_VAR] != env[CONFIG_HASH_VAR]
    tls.ensure_tls(s, ADDRESS)
    env = compose_env(s)

    docker = shutil.which("docker")
    assert docker, "docker (the compose plugin) is needed to read the merged compose files"
    files = [a for p in s.compose_files for a in ("-f", str(p))]
    env.update(PATH=os.environ["PATH"], RENDERDEV_SECRETS_DIR=str(tmp_path), RENDERDEV_RENDERS_DIR=str(tmp_path))
    done = subprocess.run(
        [docker, "compose", "-p", s.project, *files, "config", "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    published = {
        (name, str(p.get("host_ip")), int(p["target"])) for name, svc in services.items() for p in svc.get("ports", [])
    }
    on_address = {(name, target) for name, host, target in published if host == ADDRESS}
    assert on_address == {("api-tls", 8443), ("redis", 6380)}, published
    assert {(n, t) for n, h, t in published if h == "127.0.0.1"} == {("redis", 6379), ("db", 5432), ("api", 8000)}
    assert all(h in (ADDRESS, "127.0.0.1") for _, h, _ in published), published
    mounts = {str(v["source"]) for svc in services.values() for v in svc.get("volumes", [])}
    assert str(tls.tls_files(s).ca_key) not in mounts  # the CA's key never enters a container
    assert "--ssl-keyfile=/run/renderdev-tls/server.key" in services["api-tls"]["command"]
    assert services["redis"]["environment"]["REDIS_TLS_PORT"] == "6380"


# ---------------------------------------------------------------- worker files


def test_exposed_endpoints_carry_the_ca(tmp_path: Path) -> None:
    s = settings_in(tmp_path, expose=ADDRESS)
    tls.ensure_tls(s, ADDRESS)
    ends = exposed_endpoints(s)
    assert ends.api_url == f"https://{ADDRESS}:{s.api_port}"
    assert (ends.redis_host, ends.redis_port) == (ADDRESS, s.redis_port)
    assert ends.ca == tls.tls_files(s).ca_cert.read_text()
    assert endpoints_for(s, None) == ends
    assert endpoints_for(s, "loopback").ca is None
    with pytest.raises(ConfigError, match="use loopback or exposed"):
        endpoints_for(s, "lan")
    with pytest.raises(ConfigError, match="not exposed"):
        exposed_endpoints(settings_in(tmp_path, expose="none"))


def access(ca: str | None, api_url: str = f"https://{ADDRESS}:8000") -> WorkerAccess:
    return WorkerAccess("gpu-box", api_url, "tok", ADDRESS, 6379, "worker-gpu-box", "pw", ca=ca)


def test_a_worker_file_with_the_ca_round_trips_as_format_2(tmp_path: Path) -> None:
    s = settings_in(tmp_path)
    tls.ensure_tls(s, ADDRESS)
    ca = tls.tls_files(s).ca_cert.read_text()
    path = tmp_path / "gpu-box.json"
    path.write_text(access(ca).to_json())
    path.chmod(0o600)
    raw = json.loads(path.read_text())
    assert raw["format"] == WORKER_FILE_FORMAT_TLS and raw["ca"] == ca
    assert WorkerAccess.from_file(path) == access(ca)

    # Loopback files stay format 1, without a `ca` field, and are read as before.
    path.write_text(access(None, "http://127.0.0.1:8000").to_json())
    assert json.loads(path.read_text())["format"] == WORKER_FILE_FORMAT and "ca" not in json.loads(path.read_text())
    assert WorkerAccess.from_file(path) == access(None, "http://127.0.0.1:8000")

    # Format 2 without its CA, or with a plain URL, is refused naming the file.
    for broken in ({**raw, "ca": "not a certificate"}, {**raw, "api_url": f"http://{ADDRESS}:8000"}):
        path.write_text(json.dumps(broken))
        with pytest.raises(RenderConfigError, match="needs an https api_url and a PEM"):
            WorkerAccess.from_file(path)
    path.write_text(json.dumps({k: v for k, v in raw.items() if k != "ca"}))
    with pytest.raises(RenderConfigError, match="lacks or mangles 'ca'"):
        WorkerAccess.from_file(path)
