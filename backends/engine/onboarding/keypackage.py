"""Customer key packages: keys the owner onboards, in a CMS signed by the owner
certificate (id-data, attached), as the IOS XR key-package scripts make them.

The signed content is JSON in the IOS XR v3 shape:

    {"key_packages": [{"target_list": "ALLOWED_LIST", "operation": "APPEND",
                       "keys": [{"key_type": "X509KEY", "key_name": "CUS-CT",
                                 "key_metadata": "consent-token", "key_value": "<PEM>"}]}],
     "timestamp": "Mon, 30 Nov 2026 10:00:00 +0000"}

operation is APPEND, DELETE or REPLACE; only the ALLOWED_LIST target is supported.
key_type X509KEY holds a PEM public key or certificate, GPGKEY an OpenPGP public key
(armored): an owner package signing key. The key named CUS-CT is the customer
consent-token key. A package must be newer (timestamp) than the last applied.

Signer roles: the package's signer chains to the owner certificate and has digitalSignature
when it has keyUsage. It need not be an end entity: an owner certificate may be a CA reused
as a one-level OC (ios-xr/key-package-scripts does that). An X509KEY given as a certificate
signs consent-token responses, so it must be an end entity with digitalSignature.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from .. import cms, jsontext
from ..software import openpgp
from ..x509 import certcheck, pinnedpath
from ..errors import EngineError

CONSENT_TOKEN_KEY = "CUS-CT"
OPERATIONS = ("APPEND", "DELETE", "REPLACE")
KEY_TYPES = ("X509KEY", "GPGKEY")
MAX_KEYS = 64
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,6}$")


class KeyPackageError(EngineError):
    default_tag = "invalid-value"


@dataclass
class Key:
    name: str
    key_type: str
    metadata: str
    value: str

    def public_key(self):
        """The key of an X509KEY entry (a PEM public key or certificate)."""
        return self._load()[0]

    def signing_key(self):
        """The key of an X509KEY entry that signs (a consent-token key): when given as a
        certificate, that certificate is an end entity with digitalSignature."""
        key, cert = self._load()
        role = certcheck.signer_role_problem(cert) if cert is not None else None
        if role is not None:
            raise KeyPackageError("kpkg-key-role", f"key {self.name}: certificate {certcheck.subject_text(cert)} "
                                  f"{role[1]}; a signing key's certificate is an end entity with digitalSignature")
        return key

    def _load(self) -> tuple[object, x509.Certificate | None]:
        data = self.value.encode()
        try:
            if b"CERTIFICATE" not in data:
                return serialization.load_pem_public_key(data), None
            cert = x509.load_pem_x509_certificate(data)
            return cert.public_key(), cert
        except (ValueError, UnsupportedAlgorithm, x509.InvalidVersion):
            raise KeyPackageError("kpkg-malformed", f"key {self.name}: not a PEM public key or certificate") from None

    def fingerprint(self) -> str:
        """SHA-256 of the DER SubjectPublicKeyInfo (X509KEY) or of the key text (GPGKEY)."""
        if self.key_type != "X509KEY":
            return hashlib.sha256(self.value.encode()).hexdigest()
        return hashlib.sha256(self.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


@dataclass
class KeyPackage:
    timestamp: datetime
    timestamp_text: str
    changes: list[tuple[str, list[Key]]]  # (operation, keys)


def verify(data: bytes, owner_cert: x509.Certificate, at: datetime) -> KeyPackage:
    """Check the signature (the owner certificate is the trust anchor) and parse the content."""
    try:
        sd = cms.load(data)
        signers = cms.verify(sd)
        if sd.content is None:
            raise KeyPackageError("kpkg-malformed", "the key package has no content")
        for signer in signers:
            role = certcheck.signer_role_problem(signer)
            if role is not None and role[0] != "not-end-entity":
                raise KeyPackageError(f"kpkg-signer-{role[0]}", f"key package signer "
                                      f"{certcheck.subject_text(signer)} {role[1]}", tag="access-denied")
            pinnedpath.validate(signer, [owner_cert], sd.certificates, at=at)
    except cms.CmsError as exc:
        code = "kpkg-malformed" if exc.code == "cms-malformed" else "kpkg-signature-invalid"
        raise KeyPackageError(code, f"key package: {exc.message}") from None
    except pinnedpath.PathError as exc:
        raise KeyPackageError("kpkg-untrusted", f"key package signer is not the owner certificate: {exc.message}",
                              tag="access-denied") from None
    return parse(sd.content)


def parse(content: bytes) -> KeyPackage:
    try:
        doc = jsontext.loads(content)
    except jsontext.JsonTextError as exc:
        raise KeyPackageError("kpkg-malformed", f"key package content is not acceptable JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("key_packages"), list):
        raise KeyPackageError("kpkg-malformed", 'key package content has no "key_packages" list')
    stamp = doc.get("timestamp")
    try:
        when = parsedate_to_datetime(stamp) if isinstance(stamp, str) and len(stamp) <= 41 else None
    except (TypeError, ValueError):
        when = None
    if when is None or when.tzinfo is None or not 2000 <= when.year <= 2100:
        raise KeyPackageError("kpkg-malformed", f"timestamp {stamp!r} is not an RFC 2822 date (date -R)")
    changes, count = [], 0
    for i, pkg in enumerate(doc["key_packages"]):
        where = f"key_packages[{i}]"
        if not isinstance(pkg, dict):
            raise KeyPackageError("kpkg-malformed", f"{where} is not an object")
        if pkg.get("target_list") != "ALLOWED_LIST":
            raise KeyPackageError("kpkg-unsupported", f"{where}: only the ALLOWED_LIST target is supported")
        op = pkg.get("operation")
        if op not in OPERATIONS:
            raise KeyPackageError("kpkg-malformed", f"{where}: operation {op!r} is not one of {', '.join(OPERATIONS)}")
        keys = []
        for j, k in enumerate(pkg.get("keys") or []):
            count += 1
            if count > MAX_KEYS or not isinstance(k, dict):
                raise KeyPackageError("kpkg-malformed", f"{where}.keys[{j}]: not an object, or over {MAX_KEYS} keys")
            name, ktype = k.get("key_name"), k.get("key_type")
            meta, value = k.get("key_metadata", ""), k.get("key_value", "")
            if not isinstance(name, str) or not _NAME.match(name):
                raise KeyPackageError("kpkg-malformed", f"{where}.keys[{j}]: key_name must be 1-6 of [A-Za-z0-9_-]")
            if ktype not in KEY_TYPES:
                raise KeyPackageError("kpkg-malformed", f"{where}.keys[{j}]: key_type must be X509KEY or GPGKEY")
            if not isinstance(meta, str) or len(meta) > 128 or not isinstance(value, str):
                raise KeyPackageError("kpkg-malformed", f"{where}.keys[{j}]: bad key_metadata or key_value")
            if op != "DELETE" and not value:
                raise KeyPackageError("kpkg-malformed", f"{where}.keys[{j}]: key_value is empty")
            key = Key(name, ktype, meta, value)
            if op != "DELETE" and ktype == "X509KEY":
                key.signing_key()
            elif op != "DELETE":
                try:
                    openpgp.load_keys(value.encode())
                except openpgp.OpenPGPError as exc:
                    raise KeyPackageError("kpkg-malformed", f"key {name}: not an OpenPGP public key: {exc}") from None
            keys.append(key)
        changes.append((op, keys))
    return KeyPackage(when, stamp, changes)


def apply(current: dict[str, Key], pkg: KeyPackage) -> dict[str, Key]:
    """The allowed keys after the package; DELETE of a missing key is an error."""
    keys = dict(current)
    for op, entries in pkg.changes:
        if op == "REPLACE":
            keys = {}
        for k in entries:
            if op == "DELETE":
                if k.name not in keys:
                    raise KeyPackageError("kpkg-unknown-key", f"DELETE of key {k.name}, which is not installed",
                                          tag="data-missing")
                del keys[k.name]
            else:
                keys[k.name] = k
    return keys


def build(keys: list[Key], timestamp: str, operation: str = "APPEND") -> bytes:
    """The JSON content of a key package (for the lab tool)."""
    return json.dumps({"key_packages": [{"target_list": "ALLOWED_LIST", "operation": operation,
                                         "keys": [{"key_type": k.key_type, "key_name": k.name,
                                                   "key_metadata": k.metadata, "key_value": k.value}
                                                  for k in keys]}],
                       "timestamp": timestamp}, indent=1).encode()
