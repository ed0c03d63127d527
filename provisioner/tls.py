"""The stack's own certificate authority and the server certificate of its exposed address (provisioner/exposure.py).

Files, under `<state>/<project>/tls/` (settings.tls_dir):
- `ca.key` (0600) and `ca.crt`: an EC P-256 CA made once and kept, so worker files stay valid across re-runs and a
  change of address; `ca.crt` is what a worker file carries (its `ca` field) and the only certificate a worker trusts;
- `server.key` (0600, the containers' user's: the api-tls container reads it as that user, Redis's entrypoint as root)
  and `server.crt`: EC P-256, signed by the CA, for the exposed address as an IP subjectAltName. Kept while it is for
  that address, signed by that CA and not near its end; else a new one.

Every certificate's validity starts an hour before it is made (BACKDATE), so a host whose clock is a little behind
(a test host runs 2 minutes behind) accepts it at once. Files are written through provisioner/fsops.py.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provisioner.compose import CONTAINER_UID
from provisioner.config import Settings
from provisioner.errors import HostWriteError
from provisioner.fsops import atomic_write_bytes
from provisioner.plan import Step, StepState

KEY_MODE = 0o600
CERT_MODE = 0o644
DIR_MODE = 0o700
BACKDATE = timedelta(hours=1)
CA_LIFETIME = timedelta(days=3650)
SERVER_LIFETIME = timedelta(days=825)
RENEW_BEFORE = timedelta(days=30)  # a server certificate this close to its end is made again


@dataclass(frozen=True)
class TlsFiles:
    folder: Path

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca.key"

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def server_key(self) -> Path:
        return self.folder / "server.key"

    @property
    def server_cert(self) -> Path:
        return self.folder / "server.crt"


def tls_files(settings: Settings) -> TlsFiles:
    return TlsFiles(settings.tls_dir)


# ---------------------------------------------------------------- making


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_ca(project: str, *, now: datetime | None = None) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new CA for the stack of `project`: EC P-256, valid from an hour ago for CA_LIFETIME."""
    start = (now or datetime.now(UTC)) - BACKDATE
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"renderdev CA ({project})")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, address: str, *, now: datetime | None = None
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A server certificate for `address` (its IP subjectAltName), signed by the CA, valid from an hour ago."""
    start = (now or datetime.now(UTC)) - BACKDATE
    key = _new_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(min(start + SERVER_LIFETIME, ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.IPv4Address(address))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


# ---------------------------------------------------------------- reading


def _read_cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def _read_key(path: Path) -> ec.EllipticCurvePrivateKey | None:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    return key if isinstance(key, ec.EllipticCurvePrivateKey) else None


def _matches(key: ec.EllipticCurvePrivateKey | None, cert: x509.Certificate | None) -> bool:
    return key is not None and cert is not None and key.public_key() == cert.public_key()


def signed_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    """True when `cert` was issued by `ca_cert` (its issuer name and signature)."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def ip_sans(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]


def ca_pem(settings: Settings) -> str:
    """The CA certificate (PEM) a worker file carries; HostWriteError when it was not made yet."""
    path = tls_files(settings).ca_cert
    try:
        return path.read_text()
    except OSError as exc:
        raise HostWriteError(
            f"the stack's CA certificate {path} cannot be read: {exc.strerror}", hint="invoke services --expose ADDRESS"
        ) from exc


def server_cert_digest(settings: Settings) -> str:
    """sha256 (16 hex digits) of the server certificate, "" without one: part of the compose config hash, so a new
    certificate recreates the containers that mount it."""
    try:
        return hashlib.sha256(tls_files(settings).server_cert.read_bytes()).hexdigest()[:16]
    except OSError:
        return ""


# ---------------------------------------------------------------- plan and apply


def _key_owner() -> int | None:
    """Who the server key must belong to: the containers' user as root (compose.container_user), else the host user
    (the containers then run as that user)."""
    return CONTAINER_UID if os.getuid() == 0 else None


def _file_wrong(path: Path, mode: int, uid: int | None = None) -> bool:
    try:
        st = path.stat()
    except OSError:
        return True
    return (st.st_mode & 0o777) != mode or (uid is not None and st.st_uid != uid)


def _pending(settings: Settings, address: str, now: datetime) -> list[str]:
    """What ensure_tls would do, one phrase each (empty: all in place)."""
    f = tls_files(settings)
    ca_key, ca_cert = _read_key(f.ca_key), _read_cert(f.ca_cert)
    if not _matches(ca_key, ca_cert) or ca_cert is None or ca_cert.not_valid_after_utc <= now + RENEW_BEFORE:
        return [f"make a CA in {f.folder}", f"make a server certificate for {address}"]
    todo = []
    if _file_wrong(f.ca_key, KEY_MODE):
        todo.append(f"set {f.ca_key} to mode 0600")
    cert = _read_cert(f.server_cert)
    if not _matches(_read_key(f.server_key), cert) or cert is None:
        todo.append(f"make a server certificate for {address}")
    elif ip_sans(cert) != [address]:
        todo.append(f"make a server certificate for {address} (it is for {', '.join(ip_sans(cert)) or 'no address'})")
    elif not signed_by(cert, ca_cert) or cert.not_valid_after_utc <= now + RENEW_BEFORE:
        todo.append(f"make a server certificate for {address} (not signed by this CA, or near its end)")
    elif _file_wrong(f.server_key, KEY_MODE, _key_owner()):
        todo.append(f"set {f.server_key} to mode 0600, the containers' user's")
    return todo


def plan_tls(settings: Settings, address: str) -> Step:
    """The step that makes (or keeps) the CA and the server certificate for `address`."""
    title = f"TLS certificates {settings.tls_dir}"
    todo = _pending(settings, address, datetime.now(UTC))
    if not todo:
        return Step("services", title, StepState.OK, f"CA and a server certificate for {address}")
    return Step("services", title, StepState.CHANGE, "; ".join(todo), apply=lambda: ensure_tls(settings, address))


def ensure_tls(settings: Settings, address: str) -> str:
    """Make what is missing or wrong (the CA is kept while it is whole); returns what it did."""
    now = datetime.now(UTC)
    todo = _pending(settings, address, now)
    if not todo:
        return "already in place"
    f = tls_files(settings)
    try:
        f.folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        os.chmod(f.folder, DIR_MODE)
    except OSError as exc:
        raise HostWriteError(f"cannot make the TLS folder {f.folder}: {exc.strerror}") from exc
    ca_key, ca_cert = _read_key(f.ca_key), _read_cert(f.ca_cert)
    if not _matches(ca_key, ca_cert) or ca_cert is None or ca_cert.not_valid_after_utc <= now + RENEW_BEFORE:
        ca_key, ca_cert = make_ca(settings.project, now=now)
        atomic_write_bytes(f.ca_key, _key_pem(ca_key), mode=KEY_MODE)
        atomic_write_bytes(f.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), mode=CERT_MODE)
        f.server_cert.unlink(missing_ok=True)  # signed by the old CA
    elif _file_wrong(f.ca_key, KEY_MODE):
        os.chmod(f.ca_key, KEY_MODE)
    assert ca_key is not None
    cert, key = _read_cert(f.server_cert), _read_key(f.server_key)
    fresh = (
        _matches(key, cert)
        and cert is not None
        and ip_sans(cert) == [address]
        and signed_by(cert, ca_cert)
        and cert.not_valid_after_utc > now + RENEW_BEFORE
    )
    if not fresh:
        key, cert = make_server_cert(ca_key, ca_cert, address, now=now)
        atomic_write_bytes(f.server_key, _key_pem(key), mode=KEY_MODE)
        atomic_write_bytes(f.server_cert, cert.public_bytes(serialization.Encoding.PEM), mode=CERT_MODE)
    owner = _key_owner()
    try:
        if owner is not None:
            os.chown(f.server_key, owner, owner)
        os.chmod(f.server_key, KEY_MODE)
    except OSError as exc:
        raise HostWriteError(f"cannot give {f.server_key} to uid {owner}: {exc.strerror}") from exc
    return "; ".join(todo)
