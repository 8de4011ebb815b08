"""A cluster's certificate authority and its nodes' certificates, for mutual TLS (dnet.cluster.tls).

    TLS_DIR/ca.key            the CA's private key (mode 0600): issues node certificates; keep it off the nodes
    TLS_DIR/ca.pem            the CA's certificate
    TLS_DIR/NODE/ca.pem       what one node needs, to be copied to it: the CA's certificate,
    TLS_DIR/NODE/node.pem     its own certificate (for both roles: it serves and it connects),
    TLS_DIR/NODE/node.key     and its private key (mode 0600)

Keys are ECDSA P-256: small, fast to sign and verify in every TLS 1.3 stack.
"""
from __future__ import annotations

import datetime
import os
import re
from pathlib import Path

from dnet.cluster.tls import CA_FILE, CERT_FILE, KEY_FILE
from dnet.errors import DnetError

CA_DAYS = 3650
NODE_DAYS = 825
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def _crypto():
    """The `cryptography` package, imported only where certificates are made (nodes only read PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    return x509, hashes, serialization, ec, ExtendedKeyUsageOID, NameOID


def check_node_name(node: str) -> str:
    """A node's name becomes a directory and a certificate's name: a short plain word."""
    if not _NODE_NAME.fullmatch(node):
        raise DnetError(f"bad node name '{node}'", hint="letters, digits, '.', '_' and '-', up to 63 characters")
    return node


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)   # never readable by others, not even briefly
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _key_pem(key) -> bytes:
    _, _, serialization, _, _, _ = _crypto()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def create_ca(tls_dir: str | os.PathLike, cluster: str = "dnet cluster") -> Path:
    """A new CA in `tls_dir` (refused if one is there already); returns its certificate's path."""
    x509, hashes, serialization, ec, _, NameOID = _crypto()
    root = Path(tls_dir)
    if (root / "ca.key").exists() or (root / CA_FILE).exists():
        raise DnetError(f"{root} already holds a cluster CA; not overwriting it", hint="remove it first")
    root.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{cluster} CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    public = key.public_key()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256()))
    _write_private(root / "ca.key", _key_pem(key))
    (root / CA_FILE).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return root / CA_FILE


def issue_node(tls_dir: str | os.PathLike, node: str) -> Path:
    """A certificate for `node`, signed by the CA in `tls_dir`, in `tls_dir/node/`; returns that directory."""
    x509, hashes, serialization, ec, ExtendedKeyUsageOID, NameOID = _crypto()
    root = Path(tls_dir)
    check_node_name(node)
    try:
        ca_key = serialization.load_pem_private_key((root / "ca.key").read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate((root / CA_FILE).read_bytes())
    except (OSError, ValueError) as err:
        raise DnetError(f"cannot read the cluster CA in {root}: {err}",
                        hint="`dnet cluster init` creates one") from None
    out = root / node
    if out.exists():
        raise DnetError(f"{out} exists; not overwriting a node's certificate", hint="remove it first")
    out.mkdir(parents=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=NODE_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(node)]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write_private(out / KEY_FILE, _key_pem(key))
    (out / CERT_FILE).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / CA_FILE).write_bytes((root / CA_FILE).read_bytes())
    return out
