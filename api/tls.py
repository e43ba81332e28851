"""TLS material: a self-signed certificate for development (`entasis up`), and the check that a
configured certificate and key load, so a bad path fails at start-up with a clear message."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import ssl
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")


def self_signed(
    cert_path: Path | str,
    key_path: Path | str,
    hosts: Iterable[str] = DEFAULT_HOSTS,
    days: int = 30,
) -> None:
    """Write a self-signed certificate (PEM) for `hosts` (names or IP addresses) and its private
    key (PEM, mode 0600). For development only: clients must trust this very certificate, e.g.
    `curl --cacert cert.pem` or `REQUESTS_CA_BUNDLE=cert.pem`. ECDSA P-256: generated instantly."""
    cert_path, key_path = Path(cert_path), Path(key_path)
    hosts = list(hosts)
    if not hosts:
        raise ValueError("a certificate needs at least one host")
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, hosts[0]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Entasis Engine (development, self-signed)"),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    public_key = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate a client clock slightly behind
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        # A self-signed certificate is its own trust anchor: clients that verify strictly
        # (OpenSSL 3, Python 3.13's X509_STRICT) want CA:TRUE and the key identifiers on it.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # Created 0600 from the start, so the key is never readable by others, not even briefly.
    with contextlib.suppress(FileNotFoundError):
        key_path.unlink()
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key_pem)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def ensure_self_signed(
    cert_path: Path | str, key_path: Path | str, hosts: Iterable[str] = DEFAULT_HOSTS, days: int = 30
) -> bool:
    """Reuse a development pair that loads and stays valid for at least another day (so clients
    that trusted it keep working across restarts); otherwise write a new one. True when written."""
    cert_path, key_path = Path(cert_path), Path(key_path)
    if cert_path.is_file() and key_path.is_file() and check_tls_files(cert_path, key_path) is None:
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except ValueError:
            cert = None
        if cert is not None and cert.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=1):
            return False
    self_signed(cert_path, key_path, hosts, days)
    return True


def check_tls_files(cert_path: Path, key_path: Path) -> str | None:
    """None when the pair loads as a server certificate; otherwise what is wrong."""
    for path, what in ((cert_path, "certificate"), (key_path, "key")):
        if not path.is_file():
            return f"TLS {what} file not found: {path}"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert_path, key_path)
    except ssl.SSLError as exc:
        return f"TLS certificate {cert_path} and key {key_path} do not load as a pair: {exc.reason or exc}"
    except OSError as exc:
        return f"TLS certificate or key unreadable: {exc.strerror or exc}"
    return None
