"""Certificates the device makes itself and PKCS#10 requests.

IOS XR's `enrollment url self` on the system-trustpoint makes a self-signed root from the
`ca-keypair`, then a leaf from the `keypair` signed by that root; terminal and SCEP
enrollment send a PKCS#10 request instead.

Key types: RSA (2048 bits and more), ECDSA on P-256/P-384/P-521 (signed with the
configured digest) and Ed25519 (no separate digest). MD5 and SHA-1 are refused for
anything new.

Key usage follows the configuration, except where RFC 5480 and RFC 8410 forbid a bit
for the key type (encipherment with an EC or Ed25519 key, key agreement with Ed25519):
those are refused, and the defaults leave them out.

No clock of its own: callers pass `now`.
"""
from __future__ import annotations

import ipaddress
import re
import secrets
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import AttributeOID, NameOID, ObjectIdentifier

from backends.engine.errors import EngineError

MIN_RSA_BITS = 2048
MAX_SUBJECT_TEXT = 4096
MAX_ATTRIBUTES = 32
MAX_LIFETIME_DAYS = 8192          # IOS XR `lifetime` accepts 1..8192 days
MAX_CHALLENGE = 255               # PKCS#9 upper bound for challengePassword
EC_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)

UNSTRUCTURED_ADDRESS = ObjectIdentifier("1.2.840.113549.1.9.8")

KEY_USAGE_NAMES = ("digitalsignature", "keycertsign", "crlsign", "nonrepudiation",
                   "keyagreement", "dataencipherment", "keyencipherment")
_KEY_USAGE_FIELDS = {"digitalsignature": "digital_signature", "keycertsign": "key_cert_sign",
                     "crlsign": "crl_sign", "nonrepudiation": "content_commitment",
                     "keyagreement": "key_agreement", "dataencipherment": "data_encipherment",
                     "keyencipherment": "key_encipherment"}
_ALL_KU_FIELDS = ("digital_signature", "content_commitment", "key_encipherment",
                  "data_encipherment", "key_agreement", "key_cert_sign", "crl_sign",
                  "encipher_only", "decipher_only")
CA_KEY_USAGE_DEFAULT = frozenset({"digitalsignature", "keycertsign", "crlsign"})
LEAF_KEY_USAGE_DEFAULT = frozenset({"digitalsignature", "keyencipherment"})

DIGESTS = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}
WEAK_DIGESTS = ("md5", "sha1")

_PRINTABLE = re.compile(r"^[A-Za-z0-9 '()+,\-./:=?]+$")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
                       r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class _Attr:
    def __init__(self, oid, shown: str, max_len: int, kind: str):
        self.oid, self.shown, self.max_len, self.kind = oid, shown, max_len, kind


# key (lower case) -> attribute; upper bounds from RFC 5280 Appendix A and PKCS#9
_ATTRIBUTES = {
    "cn": _Attr(NameOID.COMMON_NAME, "CN", 64, "utf8"),
    "c": _Attr(NameOID.COUNTRY_NAME, "C", 2, "country"),
    "st": _Attr(NameOID.STATE_OR_PROVINCE_NAME, "ST", 128, "utf8"),
    "l": _Attr(NameOID.LOCALITY_NAME, "L", 128, "utf8"),
    "o": _Attr(NameOID.ORGANIZATION_NAME, "O", 64, "utf8"),
    "ou": _Attr(NameOID.ORGANIZATIONAL_UNIT_NAME, "OU", 64, "utf8"),
    "serialnumber": _Attr(NameOID.SERIAL_NUMBER, "serialNumber", 64, "printable"),
    "unstructuredname": _Attr(NameOID.UNSTRUCTURED_NAME, "unstructuredName", 255, "utf8"),
    "unstructuredaddress": _Attr(UNSTRUCTURED_ADDRESS, "unstructuredAddress", 255, "utf8"),
    "emailaddress": _Attr(NameOID.EMAIL_ADDRESS, "emailAddress", 255, "ia5"),
    "dc": _Attr(NameOID.DOMAIN_COMPONENT, "DC", 63, "ia5"),
}
# how IOS XR prints these attribute types (the seed's `show crypto ca certificates`)
SUBJECT_NAMES = {a.oid: a.shown for a in _ATTRIBUTES.values()}
_ESCAPABLE = set(',+"\\<>;=# ')


class CertIssueError(EngineError):
    """Codes: subject-invalid, weak-digest, digest-unsupported, key-mismatch, weak-key,
    key-unsupported, key-usage-invalid, lifetime-invalid, serial-invalid, issuer-not-ca,
    issuer-expired, challenge-password-invalid."""


_TAGS = {"subject-invalid": "invalid-value", "weak-digest": "invalid-value",
         "digest-unsupported": "invalid-value", "weak-key": "invalid-value",
         "key-unsupported": "invalid-value", "key-usage-invalid": "invalid-value",
         "lifetime-invalid": "invalid-value", "serial-invalid": "invalid-value",
         "challenge-password-invalid": "invalid-value"}


def _err(code: str, message: str) -> CertIssueError:
    return CertIssueError(code, message, _TAGS.get(code))


# ---- names -----------------------------------------------------------------

def _attribute(key: str, value: str) -> x509.NameAttribute:
    spec = _ATTRIBUTES.get(key.lower())
    if spec is None:
        raise _err("subject-invalid", f"unknown subject attribute {key[:32]!r}: use "
                   + ", ".join(a.shown for a in _ATTRIBUTES.values()))
    if not value:
        raise _err("subject-invalid", f"the subject attribute {spec.shown} is empty")
    if _CONTROL.search(value):
        raise _err("subject-invalid", f"the subject attribute {spec.shown} has a control character")
    if len(value) > spec.max_len:
        raise _err("subject-invalid",
                   f"the subject attribute {spec.shown} is longer than {spec.max_len} characters")
    if spec.kind == "country":
        if not (len(value) == 2 and value.isascii() and value.isalpha()):
            raise _err("subject-invalid",
                       f"C must be a two-letter country code, not {value[:16]!r}")
        return x509.NameAttribute(spec.oid, value.upper())
    if spec.kind == "printable" and not _PRINTABLE.match(value):
        raise _err("subject-invalid", f"{spec.shown} allows only letters, digits, space "
                   "and ' ( ) + , - . / : = ?")
    if spec.kind == "ia5" and not value.isascii():
        raise _err("subject-invalid", f"{spec.shown} must be ASCII")
    return x509.NameAttribute(spec.oid, value)


def _split_subject(text: str) -> list[tuple[str, str]]:
    parts: list[tuple[str, str]] = []
    buf: list[str] = []
    key: str | None = None
    i = 0
    while i < len(text):              # bounded by MAX_SUBJECT_TEXT
        ch = text[i]
        if ch == "\\":
            if i + 1 >= len(text) or text[i + 1] not in _ESCAPABLE:
                raise _err("subject-invalid",
                           "a backslash must escape one of , + \" \\ < > ; = # or space")
            buf.append(text[i + 1])
            i += 2
            continue
        if ch == "=" and key is None:
            key = "".join(buf).strip()
            buf = []
        elif ch == ",":
            parts.append(_finish(key, buf))
            key, buf = None, []
        else:
            buf.append(ch)
        i += 1
    parts.append(_finish(key, buf))
    return parts


def _finish(key: str | None, buf: list[str]) -> tuple[str, str]:
    if key is None:
        raise _err("subject-invalid", "each subject attribute is written KEY=value")
    if not key:
        raise _err("subject-invalid", "a subject attribute has no key before '='")
    return key, "".join(buf).strip()


def parse_subject(text: str) -> x509.Name:
    """An IOS XR subject-name such as "CN=lab1-ads,C=US,ST=CA,L=San Jose,O=cisco systems".
    The first attribute written is the first RDN of the Name."""
    if not isinstance(text, str) or not text.strip():
        raise _err("subject-invalid", "the subject name is empty")
    if len(text) > MAX_SUBJECT_TEXT:
        raise _err("subject-invalid", f"the subject name is longer than {MAX_SUBJECT_TEXT} characters")
    parts = _split_subject(text)
    if len(parts) > MAX_ATTRIBUTES:
        raise _err("subject-invalid", f"the subject name has more than {MAX_ATTRIBUTES} attributes")
    return x509.Name([x509.RelativeDistinguishedName([_attribute(k, v)]) for k, v in parts])


def subject_text(name: x509.Name) -> str:
    """A Name the way IOS XR shows it: last RDN first, e.g.
    "serialNumber=c44a11fc,unstructuredName=ios.cisco.com,OU=ASR,...,CN=lab1-ca"."""
    return name.rfc4514_string(SUBJECT_NAMES)


def device_subject(base: x509.Name | None, fqdn: str | None, serial_number: str | None,
                   ip_address: str | None) -> x509.Name:
    """The configured subject followed by the FQDN (unstructuredName), the IP address
    (unstructuredAddress) and the router serial number (serialNumber). Printed last RDN
    first, this reads like the seed: "serialNumber=...,unstructuredAddress=...,
    unstructuredName=...,<configured name, reversed>"."""
    rdns = list(base.rdns) if base is not None else []
    if fqdn is not None:
        if not _HOSTNAME.match(fqdn):
            raise _err("subject-invalid", f"{fqdn[:64]!r} is not a host name")
        rdns.append(x509.RelativeDistinguishedName([_attribute("unstructuredName", fqdn)]))
    if ip_address is not None:
        try:
            addr = ipaddress.ip_address(ip_address)
        except ValueError:
            raise _err("subject-invalid", f"{ip_address[:64]!r} is not an IP address") from None
        rdns.append(x509.RelativeDistinguishedName([_attribute("unstructuredAddress", str(addr))]))
    if serial_number is not None:
        rdns.append(x509.RelativeDistinguishedName([_attribute("serialNumber", serial_number)]))
    if len(rdns) > MAX_ATTRIBUTES:
        raise _err("subject-invalid", f"the subject name has more than {MAX_ATTRIBUTES} attributes")
    return x509.Name(rdns)


# ---- keys, digests, key usage -------------------------------------------------

def _public(key):
    """The public half of a private key; a public key as is."""
    return key.public_key() if hasattr(key, "private_bytes") else key


def _check_key(key, role: str) -> None:
    pub = _public(key)
    if isinstance(pub, rsa.RSAPublicKey):
        if pub.key_size < MIN_RSA_BITS:
            raise _err("weak-key", f"the {role} RSA key has {pub.key_size} bits; "
                       f"at least {MIN_RSA_BITS} are required")
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        if not isinstance(pub.curve, EC_CURVES):
            raise _err("key-unsupported", f"the {role} key is on curve {pub.curve.name}; "
                       "use P-256, P-384 or P-521")
    elif not isinstance(pub, ed25519.Ed25519PublicKey):
        raise _err("key-unsupported", f"the {role} key must be RSA, ECDSA or Ed25519")


def digest(name: str | None, key) -> hashes.HashAlgorithm | None:
    """The hash to sign with: sha256 unless configured; None for Ed25519 keys."""
    chosen = "sha256"
    if name is not None:
        chosen = str(name).strip().lower().replace("-", "")
        if chosen in WEAK_DIGESTS:
            raise _err("weak-digest", f"{chosen} is too weak for new certificates and "
                       "requests: use sha256, sha384 or sha512")
        if chosen not in DIGESTS:
            raise _err("digest-unsupported", f"unknown message digest {str(name)[:32]!r}: "
                       "use sha256, sha384 or sha512")
    _check_key(key, "signing")
    if isinstance(_public(key), ed25519.Ed25519PublicKey):
        return None
    return DIGESTS[chosen]()


def _key_usage(names, default: frozenset, key, *, ca: bool) -> x509.KeyUsage:
    wanted = set(default) if not names else set()
    for n in names or ():
        norm = str(n).strip().lower()
        if norm not in _KEY_USAGE_FIELDS:
            raise _err("key-usage-invalid", f"unknown key usage {str(n)[:32]!r}: use "
                       + ", ".join(KEY_USAGE_NAMES))
        wanted.add(norm)
    pub = _public(key)
    forbidden: set[str] = set()
    if isinstance(pub, ec.EllipticCurvePublicKey):
        forbidden = {"keyencipherment", "dataencipherment"}           # RFC 5480 §3
    elif isinstance(pub, ed25519.Ed25519PublicKey):
        forbidden = {"keyencipherment", "dataencipherment", "keyagreement"}  # RFC 8410 §5
    if not names:
        wanted -= forbidden
    bad = sorted(wanted & forbidden)
    if bad:
        raise _err("key-usage-invalid",
                   f"key usage {', '.join(bad)} cannot be used with this key type")
    if ca and "keycertsign" not in wanted:
        raise _err("key-usage-invalid", "a CA certificate needs the keycertsign key usage")
    if not ca and "keycertsign" in wanted:
        # RFC 5280 4.2.1.3: keyCertSign requires cA in basicConstraints
        raise _err("key-usage-invalid", "keycertsign belongs to CA certificates, not to a leaf")
    fields = {_KEY_USAGE_FIELDS[n] for n in wanted}
    return x509.KeyUsage(**{f: f in fields for f in _ALL_KU_FIELDS})


def _times(now: datetime, lifetime_days: int) -> tuple[datetime, datetime]:
    if not isinstance(lifetime_days, int) or isinstance(lifetime_days, bool) \
            or not 1 <= lifetime_days <= MAX_LIFETIME_DAYS:
        raise _err("lifetime-invalid", f"a lifetime is 1..{MAX_LIFETIME_DAYS} days")
    if not isinstance(now, datetime):
        raise TypeError("now must be a datetime")
    start = (now.replace(tzinfo=timezone.utc) if now.tzinfo is None
             else now.astimezone(timezone.utc)).replace(microsecond=0)
    return start, start + timedelta(days=lifetime_days)


def _check_serial(serial: int) -> None:
    # RFC 5280 §4.1.2.2: positive, at most 20 octets
    if not isinstance(serial, int) or isinstance(serial, bool) or serial <= 0 \
            or serial.bit_length() > 159:
        raise _err("serial-invalid", "a certificate serial number is a positive integer "
                   "of at most 20 octets")


def new_serial() -> int:
    """126 random bits with the top one set: always 16 octets, positive."""
    return secrets.randbits(126) | (1 << 125)


def _spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def matches_key(cert: x509.Certificate, public_key) -> bool:
    """True if the certificate's SubjectPublicKeyInfo is this key (public or private)."""
    try:
        return _spki(cert.public_key()) == _spki(_public(public_key))
    except (AttributeError, TypeError, ValueError):
        return False


# ---- certificates and requests -------------------------------------------------

def self_signed_ca(key, subject: x509.Name, *, lifetime_days: int, key_usage: set[str] | None,
                   digest_name: str | None, serial: int, now: datetime) -> x509.Certificate:
    if not isinstance(subject, x509.Name) or not len(subject):
        raise _err("subject-invalid", "a CA certificate needs a subject name")
    algorithm = digest(digest_name, key)
    _check_serial(serial)
    usage = _key_usage(key_usage, CA_KEY_USAGE_DEFAULT, key, ca=True)
    start, end = _times(now, lifetime_days)
    public = key.public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(public)
    builder = (x509.CertificateBuilder()
               .subject_name(subject).issuer_name(subject)
               .public_key(public).serial_number(serial)
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(usage, critical=True)
               .add_extension(ski, critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                              critical=False))
    return builder.sign(key, algorithm)


def _issuer_ski(ca_cert: x509.Certificate) -> x509.SubjectKeyIdentifier:
    try:
        return ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(ca_cert.public_key())


def _check_issuer(ca_key, ca_cert: x509.Certificate) -> None:
    if not matches_key(ca_cert, ca_key):
        raise _err("key-mismatch", "the CA certificate does not match the CA key")
    try:
        bc = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise _err("issuer-not-ca", "the issuing certificate is not a CA certificate")
    try:
        ku = ca_cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        ku = None
    if ku is not None and not ku.key_cert_sign:
        raise _err("issuer-not-ca", "the issuing certificate lacks the keyCertSign key usage")


def issue(ca_key, ca_cert: x509.Certificate, public_key, subject: x509.Name, *,
          lifetime_days: int, key_usage: set[str] | None, digest_name: str | None, serial: int,
          now: datetime, san_dns: str | None = None) -> x509.Certificate:
    """A leaf for `public_key` signed by the CA; it never outlives the CA certificate."""
    _check_issuer(ca_key, ca_cert)
    algorithm = digest(digest_name, ca_key)
    public_key = _public(public_key)
    _check_key(public_key, "subject")
    _check_serial(serial)
    if not isinstance(subject, x509.Name) or (not len(subject) and san_dns is None):
        raise _err("subject-invalid", "a certificate needs a subject name")
    usage = _key_usage(key_usage, LEAF_KEY_USAGE_DEFAULT, public_key, ca=False)
    start, end = _times(now, lifetime_days)
    end = min(end, ca_cert.not_valid_after_utc)
    if end <= start:
        raise CertIssueError("issuer-expired", "the CA certificate has expired")
    builder = (x509.CertificateBuilder()
               .subject_name(subject).issuer_name(ca_cert.subject)
               .public_key(public_key).serial_number(serial)
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(usage, critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key),
                              critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                   _issuer_ski(ca_cert)), critical=False))
    if san_dns is not None:
        if not _HOSTNAME.match(san_dns):
            raise _err("subject-invalid", f"{san_dns[:64]!r} is not a DNS name")
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(san_dns.rstrip("."))]), critical=not len(subject))
    return builder.sign(ca_key, algorithm)


def make_csr(key, subject: x509.Name, *, challenge_password: str | None,
             digest_name: str | None, ip_address: str | None = None) -> x509.CertificateSigningRequest:
    """A PKCS#10 request; `ip_address` becomes a subjectAltName iPAddress in the
    requested extensions (put it in the subject with device_subject)."""
    algorithm = digest(digest_name, key)
    if not isinstance(subject, x509.Name):
        raise _err("subject-invalid", "the request needs a subject name")
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if challenge_password:
        if not isinstance(challenge_password, str) or len(challenge_password) > MAX_CHALLENGE \
                or _CONTROL.search(challenge_password):
            # the message never repeats the password
            raise _err("challenge-password-invalid", "the challenge password must be at most "
                       f"{MAX_CHALLENGE} printable characters")
        builder = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD,
                                        challenge_password.encode())
    if ip_address is not None:
        try:
            addr = ipaddress.ip_address(ip_address)
        except ValueError:
            raise _err("subject-invalid", f"{str(ip_address)[:64]!r} is not an IP address") from None
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(addr)]),
                                        critical=False)
    return builder.sign(key, algorithm)


def csr_pem(csr: x509.CertificateSigningRequest) -> str:
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")
