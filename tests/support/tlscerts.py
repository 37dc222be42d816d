"""Certificates for mutual TLS between the Docker executor and test ``dockerd`` processes.

Docker's "Protect the Docker daemon socket" guide (docs.docker.com/engine/security/protect-access/)
sets up exactly this: one CA; a server certificate whose subjectAltName holds the address
clients dial (``IP:127.0.0.1``) with ``extendedKeyUsage = serverAuth``; a client certificate with
``extendedKeyUsage = clientAuth``; ``dockerd --tlsverify --tlscacert --tlscert --tlskey`` then
accepts only clients whose certificate that CA signed. Go's TLS stack (dockerd) checks the key
usages, and Python's ``ssl`` checks the SAN, so both are set as the guide sets them.

A second, unrelated CA issues the certificates of the refusal tests: a client certificate the
daemon must refuse, and a server certificate the executor must refuse.

Keys are EC P-256: generating one takes a millisecond (RSA-2048 takes ~50 ms each).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=2)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """ECDSA keys sign (the handshake, or certificates for a CA); nothing else."""
    return x509.KeyUsage(
        digital_signature=True,
        key_encipherment=False,
        content_commitment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Authority:
    """A CA: its certificate file (what a peer trusts) and what it signs with."""

    name: str
    cert: Path
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    def issue(self, directory: Path, stem: str, *, server_ip: str | None = None) -> KeyPair:
        """A leaf certificate: a server one for ``server_ip`` when given, else a client one."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{self.name} {stem}")]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.private_key.public_key()),
                critical=False,
            )
        )
        if server_ip is not None:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(server_ip))]), critical=False
            ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
        certificate = builder.sign(self.private_key, hashes.SHA256())
        return KeyPair(
            cert=_write(directory / f"{stem}-cert.pem", certificate.public_bytes(serialization.Encoding.PEM)),
            key=_write_key(directory / f"{stem}-key.pem", key),
        )


def _write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return _write(path, pem, 0o600)


def new_authority(directory: Path, name: str) -> Authority:
    """A self-signed CA whose certificate is written to ``directory/<name>-ca.pem``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = _write(directory / f"{name}-ca.pem", certificate.public_bytes(serialization.Encoding.PEM))
    return Authority(name=name, cert=path, certificate=certificate, private_key=key)


@dataclass(frozen=True)
class Pki:
    """Every file the multi-host tests need: the real CA's, and an unrelated CA's."""

    #: the CA the daemons trust and the executors verify servers with.
    ca: Path
    #: the daemons' certificate (SAN IP:127.0.0.1), signed by ``ca``.
    server: KeyPair
    #: the executors' client certificate, signed by ``ca``.
    client: KeyPair
    #: an unrelated CA, and what it signed: a client and a server certificate no peer should accept.
    rogue_ca: Path
    rogue_client: KeyPair
    rogue_server: KeyPair

    def private_keys(self) -> list[bytes]:
        """The key files' contents (for asserting that no message ever carries them)."""
        return [p.key.read_bytes() for p in (self.server, self.client, self.rogue_client, self.rogue_server)]


def make_pki(directory: Path, address: str = "127.0.0.1") -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    real, rogue = new_authority(directory, "real"), new_authority(directory, "rogue")
    return Pki(
        ca=real.cert,
        server=real.issue(directory, "server", server_ip=address),
        client=real.issue(directory, "client"),
        rogue_ca=rogue.cert,
        rogue_client=rogue.issue(directory, "rogue-client"),
        rogue_server=rogue.issue(directory, "rogue-server", server_ip=address),
    )
