"""The lab's certificate authority and the certificates it issues (cryptography).

Each lab gets a CA when it first needs one, kept with the lab's records
(`<state>/<lab>/ca/ca.crt`, removed by `down`): `labctl ca` prints its path,
probes verify against it. Certificates issued from it (what cert-manager's
`cert-manager.io/cluster-issuer: labctl-ca` asks for) are cached by their
names, so a reload does not change them. The ingress controller's "Kubernetes
Ingress Controller Fake Certificate" is self-signed, as ingress-nginx's is:
a client that verifies sees it fail.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

ISSUER = "labctl-ca"  # the ClusterIssuer name the cert-manager annotation may give
FAKE_SUBJECT = "Kubernetes Ingress Controller Fake Certificate"


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _write(pair: Pair, cert, key) -> None:
    from cryptography.hazmat.primitives import serialization

    pair.cert.parent.mkdir(parents=True, exist_ok=True)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    for path, data in ((pair.key, key_pem), (pair.cert, cert.public_bytes(serialization.Encoding.PEM))):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.chmod(tmp, 0o600 if path == pair.key else 0o644)
        os.replace(tmp, path)


def _name(cn: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _builder(subject, issuer, public_key, days: int):
    """`subject`, `issuer`: x509 Names."""
    from cryptography import x509

    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def ca(root: Path, lab: str) -> Pair:
    """The lab's CA under `root` (made the first time)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    pair = Pair(root / "ca.crt", root / "ca.key")
    if pair.cert.exists() and pair.key.exists():
        return pair
    key = _key()
    subject = f"labctl {lab} CA"
    cert = (
        _builder(_name(subject), _name(subject), key.public_key(), 3650)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write(pair, cert, key)
    return pair


def issue(root: Path, lab: str, names: list[str]) -> Pair:
    """A certificate for `names` (DNS names, wildcards included) from the lab's CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    digest = hashlib.sha1(",".join(sorted(names)).encode()).hexdigest()[:16]
    pair = Pair(root / "issued" / f"{digest}.crt", root / "issued" / f"{digest}.key")
    if pair.cert.exists() and pair.key.exists():
        return pair
    authority = ca(root, lab)
    ca_cert = x509.load_pem_x509_certificate(authority.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(authority.key.read_bytes(), None)
    key = _key()
    cert = (
        _builder(_name(names[0]), ca_cert.subject, key.public_key(), 825)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(pair, cert, key)
    return pair


def fake(root: Path) -> Pair:
    """ingress-nginx's default certificate: self-signed, for ingress.local. Made with the
    openssl command (every lab with an ingress controller needs it at once, and the
    cryptography package takes longer to import than openssl to run)."""
    import subprocess

    pair = Pair(root / "fake.crt", root / "fake.key")
    if pair.cert.exists() and pair.key.exists():
        return pair
    root.mkdir(parents=True, exist_ok=True)
    tmp = Pair(root / "fake.crt.tmp", root / "fake.key.tmp")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "365"]
        + ["-subj", f"/CN={FAKE_SUBJECT}", "-addext", "subjectAltName=DNS:ingress.local", "-keyout", str(tmp.key), "-out", str(tmp.cert)],
        check=True,
        capture_output=True,
    )
    os.chmod(tmp.key, 0o600)
    os.replace(tmp.key, pair.key)
    os.replace(tmp.cert, pair.cert)
    return pair


def usable(cert_pem: bytes, key_pem: bytes) -> str | None:
    """Why a Secret's certificate and key cannot serve (None: they can)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, None)
    except (ValueError, TypeError) as e:
        return f"not a PEM certificate and key: {e}"
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        return "the key does not match the certificate"
    return None


def describe(path: Path) -> dict:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return {"path": str(path), "subject": cert.subject.rfc4514_string(), "fingerprint": cert.fingerprint(hashes.SHA256()).hex(":")}
