"""The CA trust pool: built-in and downloaded CA certificate bundles, and the automatic
update schedule (IOS XR "Certificate Authority Trust Pool Management").

A bundle is PKCS#7 certs-only (DER or PEM) or concatenated PEM certificates. An update
replaces the downloaded set as a whole; a built-in certificate is never removed but becomes
inactive while a downloaded certificate has the same subject.

Times are timezone-aware datetimes given by the caller; nothing here reads the clock.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Iterable, Iterator

from asn1crypto import cms as asn1_cms
from asn1crypto import core as asn1_core
from asn1crypto import pem as asn1_pem
from cryptography import x509

from ..errors import EngineError
from .certcheck import readable, unique

log = logging.getLogger(__name__)

MAX_BUNDLE_CERTS = 1000
MAX_BUNDLE_BYTES = 8 * 1024 * 1024
BUNDLE_INVALID = "trustpool-bundle-invalid"
SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

_BEGIN_CERT = b"-----BEGIN CERTIFICATE-----"
_END_CERT = b"-----END CERTIFICATE-----"
_BEGIN_P7 = b"-----BEGIN PKCS7-----"
_END_P7 = b"-----END PKCS7-----"

# Retries before the earliest expiry when an automatic update fails to start: the fixed
# points, then once an hour after the last of them until a download succeeds.
RETRY_BEFORE_EXPIRY = tuple(timedelta(days=d) for d in (20, 15, 10, 5, 4, 3, 2, 1))
RETRY_EVERY = timedelta(hours=1)


class TrustpoolError(EngineError):
    default_tag = "invalid-value"


def _invalid(message: str) -> TrustpoolError:
    return TrustpoolError(BUNDLE_INVALID, message, tag="invalid-value")


def _pem_cert_blocks(data: bytes) -> Iterator[tuple[int, bytes | None]]:
    """(offset, block) for each BEGIN/END CERTIFICATE block; block is None when unterminated.
    Text between blocks is skipped. Stops after MAX_BUNDLE_CERTS + 1 blocks."""
    pos = 0
    for _ in range(MAX_BUNDLE_CERTS + 1):
        start = data.find(_BEGIN_CERT, pos)
        if start < 0:
            return
        end = data.find(_END_CERT, start + len(_BEGIN_CERT))
        if end < 0:
            yield start, None
            return
        pos = end + len(_END_CERT)
        yield start, data[start:pos]


def _parse_pem_certs(data: bytes, strict: bool) -> tuple[list[x509.Certificate], int]:
    """Certificates of the PEM blocks in `data`, and how many blocks were skipped.
    strict: any bad block refuses the whole bundle; otherwise bad blocks are skipped."""
    certs: list[x509.Certificate] = []
    skipped = 0
    for n, (offset, block) in enumerate(_pem_cert_blocks(data)):
        if n >= MAX_BUNDLE_CERTS:
            raise _invalid(f"the bundle holds more than {MAX_BUNDLE_CERTS} certificates")
        if block is None:
            if strict:
                raise _invalid(f"certificate {n + 1} (at byte {offset}) has no END line")
            skipped += 1
            continue
        try:
            certs.append(_readable(x509.load_pem_x509_certificate(block)))
        except ValueError as e:
            if strict:
                raise _invalid(f"certificate {n + 1} (at byte {offset}) is not a valid X.509 "
                               f"certificate: {e}") from None
            skipped += 1
    return certs, skipped


def _readable(cert: x509.Certificate) -> x509.Certificate:
    if not readable(cert):
        raise ValueError("its names or extensions are malformed")
    return cert


# What asn1crypto raises on malformed input: it decodes lazily, so errors surface on access.
_DECODE_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError)


def _parse_pkcs7(data: bytes, pem: bool) -> list[x509.Certificate]:
    """The X.509 certificates of a PKCS#7 SignedData, in their encoded order.

    Read with asn1crypto rather than cryptography's PKCS#7 loader: bundles made by common
    tools (openssl crl2pkcs7 among them) keep file order in the certificates SET, which is
    not DER set ordering, and cryptography only tolerates that with a deprecation warning.
    A signature on the bundle, if any, is not checked here."""
    try:
        if pem:
            start = data.index(_BEGIN_P7)
            end = data.find(_END_P7, start)
            if end < 0:
                raise _invalid("the PKCS#7 PEM block has no END line")
            _, _, data = asn1_pem.unarmor(data[start:end + len(_END_P7)])
        info = asn1_cms.ContentInfo.load(data, strict=True)
        if info["content_type"].native != "signed_data":
            raise _invalid(f"the PKCS#7 content is {info['content_type'].native}, not signedData")
        choices = info["content"]["certificates"]
        if isinstance(choices, asn1_core.Void):
            return []
        if len(choices) > MAX_BUNDLE_CERTS:
            raise _invalid(f"the bundle holds {len(choices)} certificates, over the limit of {MAX_BUNDLE_CERTS}")
        ders = [c.chosen.dump() for c in choices if c.name == "certificate"]
    except TrustpoolError:
        raise
    except _DECODE_ERRORS as e:
        raise _invalid(f"the PKCS#7 bundle cannot be parsed: {e}") from None
    certs = []
    for n, der in enumerate(ders):
        try:
            certs.append(_readable(x509.load_der_x509_certificate(der)))
        except ValueError as e:
            raise _invalid(f"certificate {n + 1} of the PKCS#7 bundle is not a valid X.509 "
                           f"certificate: {e}") from None
    return certs


def parse_bundle(data: bytes) -> list[x509.Certificate]:
    """The certificates of a CA bundle, in bundle order without repeats.

    Accepts PKCS#7 certs-only in DER or PEM (-----BEGIN PKCS7-----), or concatenated PEM
    certificates (text between the blocks is ignored). Raises TrustpoolError
    (trustpool-bundle-invalid) for an empty, unparseable or oversized bundle.
    """
    if len(data) > MAX_BUNDLE_BYTES:
        raise _invalid(f"the bundle is {len(data)} bytes, over the {MAX_BUNDLE_BYTES}-byte limit")
    if not data.strip():
        raise _invalid("the bundle is empty")
    if _BEGIN_P7 in data:
        certs = _parse_pkcs7(data, pem=True)
    elif _BEGIN_CERT in data:
        certs, _ = _parse_pem_certs(data, strict=True)
    elif data[:1] == b"\x30":       # a DER SEQUENCE: ContentInfo
        certs = _parse_pkcs7(data, pem=False)
    else:
        raise _invalid("the bundle is neither PKCS#7 nor PEM certificates")
    if len(certs) > MAX_BUNDLE_CERTS:
        raise _invalid(f"the bundle holds {len(certs)} certificates, over the limit of {MAX_BUNDLE_CERTS}")
    if not certs:
        raise _invalid("the bundle holds no certificates")
    return unique(certs)


def system_bundle(path: str | Path = SYSTEM_BUNDLE) -> list[x509.Certificate]:
    """The operating system's CA bundle as built-in trust pool certificates.

    Certificates that cryptography cannot parse are skipped (some system bundles carry
    legacy encodings); the counts are logged. A missing file gives an empty list."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BUNDLE_BYTES + 1)
    except FileNotFoundError:
        log.warning("trustpool: system CA bundle %s not found", path)
        return []
    if len(data) > MAX_BUNDLE_BYTES:
        raise _invalid(f"{path} is over the {MAX_BUNDLE_BYTES}-byte limit")
    certs, skipped = _parse_pem_certs(data, strict=False)
    certs = unique(certs)
    log.info("trustpool: %d built-in certificates from %s (%d skipped)", len(certs), path, skipped)
    return certs


def active(builtin: Iterable[x509.Certificate],
           downloaded: Iterable[x509.Certificate]) -> list[x509.Certificate]:
    """The certificates the pool trusts: every downloaded one, then each built-in one whose
    subject no downloaded certificate has."""
    downloaded = list(downloaded)
    replaced = {c.subject for c in downloaded}
    return unique([*downloaded, *(c for c in builtin if c.subject not in replaced)])


def inactive(builtin: Iterable[x509.Certificate],
             downloaded: Iterable[x509.Certificate]) -> list[x509.Certificate]:
    """The built-in certificates rendered inactive by a downloaded one with the same subject."""
    replaced = {c.subject for c in downloaded}
    return unique(c for c in builtin if c.subject in replaced)


def earliest_expiry(certs: Iterable[x509.Certificate]) -> datetime | None:
    """The notAfter the update timer follows: the earliest of the pool's certificates."""
    return min((c.not_valid_after_utc for c in certs), default=None)


def update_schedule_points(earliest_expiry: datetime) -> Iterator[datetime]:
    """The automatic update attempts, in order: 20, 15, 10, 5, 4, 3, 2 and 1 days before the
    earliest expiry, then once every hour after the last of those, without end (until a
    download succeeds). Infinite: take a bounded slice (itertools.islice)."""
    for off in RETRY_BEFORE_EXPIRY:
        yield earliest_expiry - off
    last = earliest_expiry - RETRY_BEFORE_EXPIRY[-1]
    k = 1
    while True:
        yield last + k * RETRY_EVERY
        k += 1


def next_update(earliest_expiry: datetime, now: datetime, last_attempt: datetime | None) -> datetime:
    """When the next automatic update attempt is due.

    It is the first point of update_schedule_points(earliest_expiry) strictly after
    last_attempt (the first point when there was no attempt yet). If that point is already
    <= now, the answer is `now`: the attempt is due at once. The hourly tail is computed, not
    walked, so this is constant time however long downloads have been failing.
    """
    fixed = [earliest_expiry - off for off in RETRY_BEFORE_EXPIRY]
    if last_attempt is None:
        point = fixed[0]
    else:
        point = next((p for p in fixed if p > last_attempt), None)
        if point is None:
            base = fixed[-1]
            point = base + ((last_attempt - base) // RETRY_EVERY + 1) * RETRY_EVERY
    return now if point <= now else point
