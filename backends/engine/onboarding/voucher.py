"""RFC 8366 ownership vouchers: the JSON artifact and its verification (RFC 8572 §5.4 step 1).

Interop policy, one decision per quirk (the README lists them too):
- eContentType id-data or id-ct-animaJSONVoucher: both accepted, the type is recorded;
  any other type is refused. Non-id-data content without signed attributes is refused
  by the CMS layer.
- The signer is a MASA: an end-entity certificate (not a CA), with digitalSignature when it
  has keyUsage, whose chain is validated to the device's MASA anchors only. Certificates in
  the CMS serve as intermediates, never as anchors. A signer that chains to a manufacturer
  (IDevID) anchor instead is a device identity and is refused as such. No TLS purpose (EKU)
  check.
- The CMS has the voucher inside it (attached content); a detached or certificates-only CMS
  is refused as such. PEM-wrapped or base64 CMS text is read as its DER.
- The JSON text is read by jsontext: UTF-8 only (a byte order mark is ignored), no duplicate
  member names at any depth, no NaN or Infinity, bounded numbers and nesting.
- Unknown JSON members are tolerated (vouchers are extensible maps; Go tooling adds "XMLName").
- Dates: RFC 3339 with offsets and fractional seconds of 1 to 9 digits (to the nanosecond, as
  Go and Java write them; read to the microsecond); the compact YYYYMMDDTHHMMSSZ form is refused,
  and so is a date whose UTC time falls outside the years 1 to 9999.
- domain-cert-revocation-checks: a boolean, or the strings "true"/"false" (RFC 8366's own example).
- assertion: verified, logged or proximity; "" and anything else is refused.
- Binary leaves: base64 or base64url (RFC 7951), padding optional, whitespace (PEM line breaks)
  ignored. Text that is valid base64 is read as base64, even when it also reads as hex.
- serial-number: must equal the node's serial exactly (case included).
- nonce: a voucher with a nonce is accepted only when the device issued that nonce.
- idevid-issuer: the node's IDevID AKI, as the whole extnValue or just its keyIdentifier.
"""
from __future__ import annotations

import binascii
import functools
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .. import cms, jsontext
from ..x509 import certcheck, pinnedpath
from ..errors import EngineError

VOUCHER_KEY = "ietf-voucher:voucher"
PROFILE_MEMBER = "trustplane-security-profile:security-profile"
ASSERTIONS = ("verified", "logged", "proximity")
SECURITY_PROFILES = ("strict", "default", "relaxed")
CONTENT_TYPES = {cms.ID_DATA: "id-data", cms.ID_CT_ANIMA_JSON_VOUCHER: "id-ct-animaJSONVoucher"}
MAX_VOUCHER = 256 * 1024
_MEMBERS = {"serial-number", "assertion", "pinned-domain-cert", "created-on", "expires-on", "nonce",
            "idevid-issuer", "domain-cert-revocation-checks", "last-renewal-date", PROFILE_MEMBER}
# RFC 3339 date-time, as the text's shape once each ASCII digit reads "d": a set lookup, where a
# pattern would need the regular expression engine on every voucher (tests/test_reference_forms.py
# holds the two to the same answers)
_DIGITS_AS_D = bytes.maketrans(b"0123456789", b"d" * 10)
_RFC3339_SHAPES = frozenset(f"dddd-dd-dd{t}dd:dd:dd{fraction}{offset}".encode() for t in "Tt"
                            for fraction in ["", *("." + "d" * n for n in range(1, 10))]
                            for offset in ("Z", "z", "+dd:dd", "-dd:dd"))


NO_CONTENT = ("the voucher CMS has no encapsulated content (a detached signature or certificates only): "
              "a voucher carries its JSON inside the CMS")


class VoucherError(EngineError):
    """code: ov-..."""


@dataclass
class Voucher:
    serial_number: str
    created_on: datetime
    expires_on: datetime | None
    assertion: str
    pinned_domain_cert: x509.Certificate
    nonce: bytes | None = None
    idevid_issuer: bytes | None = None
    revocation_checks: bool | None = None
    last_renewal_date: datetime | None = None
    security_profile: str = "default"
    content_type: str = "id-data"
    signer: x509.Certificate | None = None
    unknown_members: list[str] = field(default_factory=list)


def parse_datetime(text, what: str) -> datetime:
    # other characters than ASCII encode to octets of 0x80 and up, which no shape holds;
    # fromisoformat reads an offset's minutes up to 99 (+00:60 as +01:00), RFC 3339 stops at 59
    if not isinstance(text, str) or \
            text.encode("utf-8", "surrogatepass").translate(_DIGITS_AS_D) not in _RFC3339_SHAPES or \
            (text[-3] == ":" and text[-2] > "5"):
        raise VoucherError("ov-malformed", f"{what}: {text!r} is not an RFC 3339 date-and-time")
    if text[17:19] == "60":  # a leap second is taken as the second before it
        text = text[:17] + "59" + text[19:]
    try:
        # the shapes leave only what fromisoformat reads the RFC 3339 way (digits past
        # microseconds are dropped); it refuses dates and times that do not exist
        return datetime.fromisoformat(text.upper()).astimezone(timezone.utc)
    except ValueError as exc:
        raise VoucherError("ov-malformed", f"{what}: {text!r}: {exc}") from None
    except OverflowError:  # the offset moves it past 9999-12-31 or before 0001-01-01 in UTC
        raise VoucherError("ov-malformed", f"{what}: {text!r} is outside the years 1 to 9999 in UTC") from None


def parse_binary(text, what: str) -> bytes:
    if not isinstance(text, str):
        raise VoucherError("ov-malformed", f"{what} is not a base64 string")
    compact = "".join(text.split())
    alphabet = compact.replace("-", "+").replace("_", "/")
    try:
        return binascii.a2b_base64(alphabet + "=" * (-len(alphabet) % 4), strict_mode=True)
    except (binascii.Error, ValueError):
        raise VoucherError("ov-malformed", f"{what} is not valid base64 (binary leaves are base64, RFC 7951)") from None


def members(content: bytes) -> dict:
    """The voucher object of a voucher's JSON text, its members not yet checked."""
    if len(content) > MAX_VOUCHER:
        raise VoucherError("ov-malformed", f"voucher content over {MAX_VOUCHER} bytes")
    try:
        doc = jsontext.loads(content)
    except jsontext.JsonTextError as exc:
        raise VoucherError("ov-malformed", f"voucher content is not acceptable JSON: {exc}") from None
    v = doc.get(VOUCHER_KEY) if isinstance(doc, dict) else None
    if not isinstance(v, dict):
        raise VoucherError("ov-malformed", f'voucher content has no "{VOUCHER_KEY}" object')
    return v


def parse(content: bytes) -> Voucher:
    """The voucher JSON, with the policy above. The PDC must be a DER X.509 certificate."""
    v = members(content)

    def required(name: str):
        if name not in v:
            raise VoucherError("ov-malformed", f'voucher has no "{name}"')
        return v[name]

    serial = required("serial-number")
    if not isinstance(serial, str) or not serial:
        raise VoucherError("ov-malformed", "serial-number must be a non-empty string")
    assertion = required("assertion")
    if assertion not in ASSERTIONS:
        raise VoucherError("ov-assertion-unacceptable",
                           f"assertion {assertion!r} is not acceptable (one of {', '.join(ASSERTIONS)})")
    pdc_text = required("pinned-domain-cert")
    if not isinstance(pdc_text, str):
        raise VoucherError("ov-malformed", "pinned-domain-cert is not a base64 string")
    pdc = _pinned_domain_cert(pdc_text)
    checks = v.get("domain-cert-revocation-checks")
    if isinstance(checks, str) and checks in ("true", "false"):
        checks = checks == "true"
    if checks is not None and not isinstance(checks, bool):
        raise VoucherError("ov-malformed", "domain-cert-revocation-checks must be a boolean")
    nonce = parse_binary(v["nonce"], "nonce") if "nonce" in v else None
    if nonce is not None and not 8 <= len(nonce) <= 32:
        raise VoucherError("ov-malformed", f"nonce is {len(nonce)} bytes; RFC 8366 allows 8 to 32")
    profile = v.get(PROFILE_MEMBER, "default")
    if profile not in SECURITY_PROFILES:
        raise VoucherError("ov-malformed", f"{PROFILE_MEMBER} {profile!r} is not one of {', '.join(SECURITY_PROFILES)}")
    return Voucher(
        serial_number=serial,
        created_on=parse_datetime(required("created-on"), "created-on"),
        expires_on=parse_datetime(v["expires-on"], "expires-on") if "expires-on" in v else None,
        assertion=assertion, pinned_domain_cert=pdc, nonce=nonce,
        idevid_issuer=parse_binary(v["idevid-issuer"], "idevid-issuer") if "idevid-issuer" in v else None,
        revocation_checks=checks,
        last_renewal_date=parse_datetime(v["last-renewal-date"], "last-renewal-date") if "last-renewal-date" in v else None,
        security_profile=profile, unknown_members=sorted(v.keys() - _MEMBERS))


@functools.lru_cache(maxsize=64)  # every voucher of an owner pins the same certificate
def _pinned_domain_cert(text: str) -> x509.Certificate:
    try:
        pdc = cms.certificate(parse_binary(text, "pinned-domain-cert"))
    except (ValueError, x509.InvalidVersion):
        pdc = None
    if pdc is None or not certcheck.readable(pdc):
        raise VoucherError("ov-malformed", "pinned-domain-cert is not a DER X.509 certificate")
    return pdc


def _aki_forms(idevid: x509.Certificate) -> set[bytes]:
    try:
        ext = idevid.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    except x509.ExtensionNotFound:
        return set()
    forms = {ext.value.public_bytes()}
    if ext.value.key_identifier:
        forms.add(ext.value.key_identifier)
    return forms


def verify(data: bytes, *, anchors: Iterable[x509.Certificate], serial: str, at: datetime,
           idevid: x509.Certificate | None = None, nonces: Iterable[bytes] = (),
           device_anchors: Iterable[x509.Certificate] = ()) -> Voucher:
    """Authenticate a voucher (CMS bytes) for the node whose serial is `serial`. `anchors` are
    the MASA anchors; `device_anchors` the manufacturer (IDevID) anchors, only to say so when
    a device identity signed the voucher."""
    try:
        sd = cms.load(data)
        if sd.content_type not in CONTENT_TYPES:
            raise VoucherError("ov-content-type", f"eContentType {sd.content_type} is not a voucher type")
        if sd.content is None:
            raise VoucherError("ov-no-content", NO_CONTENT)
        signers = cms.verify(sd)
    except cms.CmsError as exc:
        code = "ov-unsigned" if exc.code == "cms-unsigned" else "ov-signature-invalid"
        if exc.code == "cms-malformed":
            code = "ov-malformed"
        raise VoucherError(code, f"voucher: {exc.message}") from None
    anchors = list(anchors)
    for signer in signers:
        _check_signer(signer, anchors, list(device_anchors), sd.certificates, at)
    v = parse(sd.content)
    v.content_type = CONTENT_TYPES[sd.content_type]
    v.signer = signers[0]
    if v.serial_number != serial:
        raise VoucherError("ov-serial-mismatch", f"voucher is for serial {v.serial_number}, not {serial}")
    if v.created_on > at:
        raise VoucherError("ov-not-yet-valid", f"voucher created-on {v.created_on.isoformat()} is in the future")
    if v.expires_on is not None and at >= v.expires_on:
        raise VoucherError("ov-expired", f"voucher for {serial} expired on {v.expires_on.isoformat()}")
    if v.nonce is not None and v.nonce not in set(nonces):
        raise VoucherError("ov-nonce-mismatch", "voucher carries a nonce this device did not issue")
    if v.idevid_issuer is not None and idevid is not None and v.idevid_issuer not in _aki_forms(idevid):
        raise VoucherError("ov-idevid-issuer-mismatch", "idevid-issuer does not match the node's IDevID issuer")
    return v


def _check_signer(signer: x509.Certificate, anchors: list, device_anchors: list, certs: list, at: datetime):
    """A voucher signer is a MASA: an end entity that may sign, under a MASA anchor."""
    role = certcheck.signer_role_problem(signer)
    if role is not None:
        kind, why = role
        raise VoucherError("ov-malformed" if kind == "malformed" else f"ov-signer-{kind}",
                           f"voucher signer {certcheck.subject_text(signer)} {why}; "
                           "a voucher is signed by a MASA end-entity certificate")
    try:
        pinnedpath.validate(signer, anchors, certs, at=at)
    except pinnedpath.PathError as exc:
        if exc.code == pinnedpath.UNTRUSTED and _chains_to(signer, device_anchors, certs, at):
            raise VoucherError("ov-signer-device-identity", f"voucher signer {certcheck.subject_text(signer)} "
                               "chains to a manufacturer (device identity) anchor, not to a MASA anchor: "
                               "a device identity never signs a voucher") from None
        code = "ov-signer-expired" if exc.code == pinnedpath.EXPIRED else "ov-signer-untrusted"
        raise VoucherError(code, f"voucher signer: {exc.message}") from None


def _chains_to(cert: x509.Certificate, anchors: list, certs: list, at: datetime) -> bool:
    if not anchors:
        return False
    try:
        pinnedpath.validate(cert, anchors, certs, at=at)
    except pinnedpath.PathError:
        return False
    return True


def pdc_pem(v: Voucher) -> str:
    return v.pinned_domain_cert.public_bytes(serialization.Encoding.PEM).decode()
