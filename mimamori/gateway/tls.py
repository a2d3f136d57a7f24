"""A small CA and a server certificate for the broker's TLS (tests and small deployments), written by
``mimamori provision`` (``gateway.provision``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .files import write_file


@dataclass
class TlsFiles:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def make_tls(tls_dir: Path, hosts: Sequence[str], *, days: int = 825, now: dt.datetime | None = None) -> TlsFiles:
    """A CA (``ca.crt``/``ca.key``) and a server certificate for ``hosts`` (DNS names or IP
    addresses) signed by it, in ``tls_dir``. Existing files are kept, so re-running does not
    invalidate the CA the gateways already trust; delete ``server.*`` to reissue for new hosts.

    For production, prefer a certificate from a real CA (e.g. Let's Encrypt for the broker's DNS
    name): gateways then verify it with the system's CAs and need no CA file.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not hosts:
        raise ValueError("make_tls needs at least one host name or IP address for the server certificate")
    tls_dir = Path(tls_dir)
    files = TlsFiles(tls_dir / "ca.crt", tls_dir / "ca.key", tls_dir / "server.crt", tls_dir / "server.key")
    now = now or dt.datetime.now(dt.UTC)
    start = now - dt.timedelta(minutes=5)

    def key_pem(key: ec.EllipticCurvePrivateKey) -> str:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()

    if files.ca_cert.exists() and files.ca_key.exists():
        ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mimamori broker CA")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        write_file(files.ca_key, key_pem(ca_key), 0o600)
        write_file(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM).decode(), 0o644)

    if not (files.server_cert.exists() and files.server_key.exists()):
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)  # type: ignore[arg-type]
            .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        )
        # 0640: the broker (e.g. uid 1883 in the eclipse-mosquitto image) must read it; see docs/deployment.md.
        write_file(files.server_key, key_pem(key), 0o640)
        write_file(files.server_cert, cert.public_bytes(serialization.Encoding.PEM).decode(), 0o644)
    return files
