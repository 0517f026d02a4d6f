"""What both certification path validators check of one certificate, and the signer role.

There are two validators, on purpose with different rules:
- pinnedpath: paths to anchors the caller pins for one artifact (the MASA anchors for a
  voucher signer, the pinned-domain-cert for an owner certificate, the owner certificate for
  a key package signer). Its own search, so that a pinned intermediate or the leaf itself can
  be the anchor (RFC 8572's partial chains), SHA-1 can be allowed under the relaxed security
  profile, the anchor's RSA size can be relaxed, and CRLs come with the artifact. Errors:
  PathError, codes path-*.
- trustpointpath: paths to a PKI trust point, then the trust pool (IOS XR's precedence), built
  by cryptography's verifier (name constraints, unknown critical extensions refused, no SHA-1
  ever), CRLs fetched from the distribution points. Errors: TrustpointPathError, codes
  cert-*, ca-expired and crl-unavailable.

Both read a certificate only when its names and extensions read (readable), refuse an RSA or
DSA key under MIN_KEY_BITS (key_weakness), and stop at MAX_PATH_CERTS certificates from the
leaf to the anchor.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Iterable

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dsa, rsa

MIN_KEY_BITS = 2048
MAX_PATH_CERTS = 8  # leaf and anchor included


def subject_text(cert: x509.Certificate) -> str:
    try:
        return cert.subject.rfc4514_string() or "<empty subject>"
    except (ValueError, TypeError):  # see readable()
        return "<malformed subject>"


def utc_text(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def ext(obj, cls):
    """The extension's value, or None when absent."""
    try:
        return obj.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None


def readable(cert: x509.Certificate) -> bool:
    """Whether the names and extensions read. cryptography reads them lazily and raises on
    malformed or duplicate ones; such a certificate can never be on a valid path."""
    try:
        cert.subject, cert.issuer, cert.extensions
    except (ValueError, TypeError, x509.DuplicateExtension):
        return False
    return True


def unique(certs: Iterable[x509.Certificate]) -> list[x509.Certificate]:
    """Drops repeats of the same certificate (equal DER), keeping the first one's place."""
    seen: set[x509.Certificate] = set()
    out = []
    for c in certs:
        if c not in seen:
            seen.add(c)
            out.append(c)
    return out


def key_weakness(cert: x509.Certificate, min_bits: int = MIN_KEY_BITS) -> str | None:
    """Why the certificate's own key is refused, or None."""
    try:
        key = cert.public_key()
    except (UnsupportedAlgorithm, ValueError) as e:
        return f"unsupported public key: {e}"
    if isinstance(key, (rsa.RSAPublicKey, dsa.DSAPublicKey)) and key.key_size < min_bits:
        kind = "RSA" if isinstance(key, rsa.RSAPublicKey) else "DSA"
        return f"{kind}-{key.key_size} key, below the {min_bits}-bit minimum"
    return None


def signer_role_problem(cert: x509.Certificate) -> tuple[str, str] | None:
    """Why cert may not sign data as an end entity, as (kind, reason); None when it may.
    kind "not-end-entity": a CA certificate signs certificates and CRLs only; "key-usage":
    keyUsage, when present, must include digitalSignature (RFC 5280 section 4.2.1.3);
    "malformed": its names or extensions cannot be read."""
    if not readable(cert):
        return "malformed", "has a malformed name or malformed extensions"
    bc, ku = ext(cert, x509.BasicConstraints), ext(cert, x509.KeyUsage)
    if bc is not None and bc.ca:
        return "not-end-entity", "is a CA certificate (basicConstraints cA is TRUE)"
    if ku is not None and not ku.digital_signature:
        return "key-usage", "has keyUsage without digitalSignature"
    return None
