"""The lab's stand-ins for the manufacturer's MASA and the owner's CA: they make real
vouchers, owner certificates, key packages and consent-token responses for a device's
serial numbers. Callers pass `now`; nothing here reads the clock.
"""
from __future__ import annotations

import base64
import io
import json
import tarfile
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from backends.engine import cms
from backends.engine.onboarding import keypackage, voucher
from backends.engine.onboarding.identity import key_usage, new_serial


def _name(cn: str, org: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: x509.Name, key_public, issuer_cert, issuer_key, now: datetime, days: int, *, ca: bool,
          usage: x509.KeyUsage, path_length: int | None = None) -> x509.Certificate:
    issuer = subject if issuer_cert is None else issuer_cert.subject
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key_public)
         .serial_number(new_serial()).not_valid_before(now - timedelta(hours=1))
         .not_valid_after(now + timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True)
         .add_extension(usage, critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key_public), critical=False))
    if issuer_cert is not None:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def make_masa(root_key, root_cert: x509.Certificate, now: datetime, *,
              usage: x509.KeyUsage | None = None, ca: bool = False):
    """A voucher-signing end-entity certificate issued by the MASA root (`usage` and `ca`
    make the wrong kinds of signer that tests need)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert(_name("trustplane Lab MASA", "trustplane"), key.public_key(), root_cert, root_key, now, 10 * 365,
                 ca=ca, usage=usage or key_usage(digital_signature=True))
    return key, cert


def make_owner_ca(now: datetime, name: str = "trustplane Lab Owner Root", days: int = 10 * 365):
    """The owner's root CA: its certificate is the pinned-domain-cert."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert(_name(name, "Lab Owner"), key.public_key(), None, key, now, days, ca=True,
                 usage=key_usage(key_cert_sign=True, crl_sign=True))
    return key, cert


def make_owner_cert(pdc_key, pdc_cert: x509.Certificate, now: datetime, *, name: str = "Lab Owner Certificate",
                    intermediate: bool = False, days: int = 2 * 365):
    """An OC chained to the PDC, optionally through an intermediate CA. Returns
    (oc key, oc cert, [intermediates])."""
    chain = []
    issuer_key, issuer_cert = pdc_key, pdc_cert
    if intermediate:
        ikey = ec.generate_private_key(ec.SECP256R1())
        icert = _cert(_name("Lab Owner Intermediate", "Lab Owner"), ikey.public_key(), pdc_cert, pdc_key, now, days,
                      ca=True, usage=key_usage(key_cert_sign=True, crl_sign=True), path_length=0)
        chain.append(icert)
        issuer_key, issuer_cert = ikey, icert
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert(_name(name, "Lab Owner"), key.public_key(), issuer_cert, issuer_key, now, days, ca=False,
                 usage=key_usage(digital_signature=True))
    return key, cert, chain


def owner_cert_cms(oc: x509.Certificate, chain: list[x509.Certificate], pdc: x509.Certificate | None = None) -> bytes:
    """The OC artifact in RFC 8572's degenerate (certs-only) form."""
    return cms.certs_only([oc, *chain, *([pdc] if pdc is not None else [])])


def make_voucher(masa_key, masa_cert: x509.Certificate, ca_cert: x509.Certificate, serial: str,
                 pdc: x509.Certificate, now: datetime, *, expires: datetime | None = None,
                 assertion: str = "logged", security_profile: str | None = None, nonce: bytes | None = None,
                 content_type: str = cms.ID_DATA) -> bytes:
    """A voucher (.vcj): RFC 8366 JSON signed by the MASA, with the MASA chain attached."""
    v = {"serial-number": serial, "created-on": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "assertion": assertion,
         "pinned-domain-cert": base64.b64encode(pdc.public_bytes(serialization.Encoding.DER)).decode()}
    if nonce is not None:
        v["nonce"] = base64.b64encode(nonce).decode()
    else:
        v["expires-on"] = (expires or now + timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%SZ")
    if security_profile is not None:
        v[voucher.PROFILE_MEMBER] = security_profile
    content = json.dumps({voucher.VOUCHER_KEY: v}).encode()
    return cms.sign(content, masa_key, masa_cert, chain=[ca_cert], content_type=content_type, signing_time=now)


def bundle(members: list[tuple[str, bytes]]) -> bytes:
    """A flat tar.gz of vouchers."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def make_key_package(oc_key, oc_cert: x509.Certificate, keys: list[keypackage.Key], now: datetime,
                     operation: str = "APPEND") -> bytes:
    content = keypackage.build(keys, now.strftime("%a, %d %b %Y %H:%M:%S +0000"), operation)
    return cms.sign(content, oc_key, oc_cert, signing_time=now)

