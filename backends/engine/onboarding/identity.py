"""Lab root CAs (the manufacturing CA that issues IDevIDs, the MASA root), IEEE 802.1AR
IDevID certificates, and PEM helpers.
Plain cryptography: no clock of its own (callers pass `now`), no XML, no YANG."""
from __future__ import annotations

import secrets
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ..errors import EngineError

# IEEE 802.1AR: an IDevID that never expires carries GeneralizedTime 99991231235959Z
NO_EXPIRY = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)


class IdentityError(EngineError):
    def __init__(self, message: str):
        super().__init__("identity-invalid", message, "invalid-value")


def new_serial() -> int:
    return secrets.randbits(63) | 1


def key_usage(**wanted: bool) -> x509.KeyUsage:
    names = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
             "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
    return x509.KeyUsage(**{n: wanted.get(n, False) for n in names})


MANUFACTURING_ROOT = "trustplane Lab Manufacturing Root CA"
MASA_ROOT = "trustplane Lab MASA Root CA"


def make_root_ca(now: datetime, name: str):
    key = ec.generate_private_key(ec.SECP384R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "trustplane"),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(new_serial())
            .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=20 * 365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(key_usage(key_cert_sign=True, crl_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA384()))
    return key, cert


def issue_idevid(ca_key, ca_cert: x509.Certificate, serial_number: str, product_id: str, now: datetime):
    """An ECDSA P-256 IDevID. Like a SUDI, the subject carries the serial twice:
    as serialNumber and in the CN `PID:<pid> SN:<serial>`."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "trustplane"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"PID:{product_id} SN:{serial_number}"),
        x509.NameAttribute(NameOID.SERIAL_NUMBER, serial_number),
    ])
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(new_serial())
            .not_valid_before(now - timedelta(hours=1)).not_valid_after(NO_EXPIRY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(key_usage(digital_signature=True, key_encipherment=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA384()))
    return key, cert


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def load_certs_pem(data: bytes | str) -> list[x509.Certificate]:
    raw = data.encode() if isinstance(data, str) else data
    try:
        certs = x509.load_pem_x509_certificates(raw)
    except (ValueError, x509.InvalidVersion) as exc:
        raise IdentityError(f"not a PEM certificate: {exc}") from None
    return certs


def load_cert_pem(data: bytes | str) -> x509.Certificate:
    return load_certs_pem(data)[0]


def key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_key_pem(data: bytes):
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"not an unencrypted PEM private key: {exc}") from None
