"""CMS SignedData (RFC 5652): read, verify and make signatures.

A small BER walker reads the structure, asn1crypto decodes a few leaves and
writes signatures, `cryptography` does the signature maths.
Only the CMS signatures are checked here: X.509 path validation is the
caller's job. Algorithms: SHA-2 and SHA-3 digests (RFC 5754, RFC 8702),
RSA PKCS#1 v1.5, RSA-PSS (RFC 4056), ECDSA on P-256/384/521 (RFC 5753) and
Ed25519 (RFC 8419). MD5 and SHA-1 are refused.

Input is untrusted: it is bounded in size and in the number of certificates,
CRLs, signers and signed attributes, and every decoding problem is reported
as a CmsError whose code is a stable string.
"""
from __future__ import annotations

import base64
import binascii
import functools
import hmac
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Annotated, Callable, Iterable, Literal

from asn1crypto import algos, cms, core, pem
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat import asn1
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from .errors import EngineError

ID_DATA = "1.2.840.113549.1.7.1"
ID_SIGNED_DATA = "1.2.840.113549.1.7.2"
ID_CT_ANIMA_JSON_VOUCHER = "1.2.840.113549.1.9.16.1.40"

MAX_INPUT = 16 << 20
MAX_CERTS = 64
MAX_CRLS = 64
MAX_SIGNERS = 16
MAX_SIGNED_ATTRS = 64

_ID_CONTENT_TYPE = "1.2.840.113549.1.9.3"
_ID_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
_ID_SIGNING_TIME = "1.2.840.113549.1.9.5"
# some signers put the key type where ecdsa-with-SHAxxx belongs; the digestAlgorithm is the hash then
_ID_EC_PUBLIC_KEY = "1.2.840.10045.2.1"

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
    "sha3_256": hashes.SHA3_256,
    "sha3_384": hashes.SHA3_384,
    "sha3_512": hashes.SHA3_512,
}
_WEAK_HASHES = {"md2", "md5", "sha1"}
# signature algorithms that name their hash; the names are asn1crypto's
_RSA_WITH = {f"{h}_rsa": h for h in ("sha224", "sha256", "sha384", "sha512")}
_ECDSA_WITH = {f"{h}_ecdsa": h for h in _HASHES}
_CURVES = {"secp256r1", "secp384r1", "secp521r1"}

# asn1crypto decodes lazily and reports bad input with assorted exception types
_DECODE_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError,
                  x509.InvalidVersion)


class CmsError(EngineError):
    """code: cms-..."""


@dataclass
class SignerInfo:
    sid_issuer_serial: tuple[bytes, int] | None
    sid_key_id: bytes | None
    digest_algorithm: str
    signature_algorithm: str
    has_signed_attrs: bool
    _signature: bytes = field(default=b"", repr=False)
    # DER of the signed attributes as a SET (tag 0x31): what the signature covers
    _signed_attrs: bytes | None = field(default=None, repr=False)
    _content_type: str | None = field(default=None, repr=False)
    _message_digest: bytes | None = field(default=None, repr=False)
    # RSA-PSS (hash, MGF1 hash or None for another mask function, salt length)
    _pss: tuple[str, str | None, int] | None = field(default=None, repr=False)

    @property
    def signing_time(self) -> datetime | None:
        """Read from the signed attributes when asked for: no check needs it."""
        for attr in cms.CMSAttributes.load(self._signed_attrs) if self._signed_attrs is not None else ():
            if attr["type"].native == "signing_time":
                return attr["values"][0].native
        return None


@dataclass
class SignedData:
    version: int
    content_type: str
    content: bytes | None
    certificates: list[x509.Certificate]
    crls: list[bytes]
    signers: list[SignerInfo]


# ---- reading ----------------------------------------------------------------

def load(data: bytes) -> SignedData:
    """A ContentInfo holding SignedData, as DER (or BER), PEM or bare base64 text."""
    data = bytes(data)
    if len(data) > MAX_INPUT:
        raise CmsError("cms-malformed", f"CMS larger than {MAX_INPUT} bytes")
    try:
        return _parse(data)
    except CmsError:
        der = _unarmor(data)
        if der is None:
            raise
    return _parse(der)


def _unarmor(data: bytes) -> bytes | None:
    """The DER inside PEM or base64 text; None when data is neither."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return None
    if "-----BEGIN" in text:
        try:
            kind, _, der = pem.unarmor(data.strip())
        except ValueError as e:
            raise CmsError("cms-malformed", f"bad PEM: {e}") from None
        if kind not in ("CMS", "PKCS7"):
            raise CmsError("cms-malformed", f"PEM block is {kind}, not CMS or PKCS7")
        return der
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except binascii.Error:
        return None


# The structure is walked with the small BER reader below rather than asn1crypto's
# schema classes: those build an object per element, which made reading a voucher cost
# several times its signature check. asn1crypto still decodes the rare leaves
# (OIDs, times, RSA-PSS parameters) and names the algorithms.

_MAX_NESTING = 32
# a streamed (BER) OCTET STRING comes in pieces; 16 MiB in 256-byte pieces is 65,536
_MAX_PIECES = 1 << 16

# An element is a tuple (identifier octet, offset, contents start, contents stop, end) into
# the buffer it was read from; tuples keep the walk cheap.
_ID, _POS, _START, _STOP, _END = range(5)


def _read(buf: bytes, pos: int, limit: int, depth: int = 0) -> tuple[int, int, int, int, int]:
    """The BER element at buf[pos:limit]."""
    if pos + 2 > limit:
        raise ValueError("truncated encoding")
    ident, first = buf[pos], buf[pos + 1]
    if ident & 0x1F == 0x1F:
        raise ValueError("high tag numbers do not occur in CMS")
    start = pos + 2
    if first < 0x80:
        stop = start + first
    elif first == 0x80:  # indefinite length: elements up to an end-of-contents
        if not ident & 0x20 or depth >= _MAX_NESTING:
            raise ValueError("bad indefinite-length element")
        stop = start
        while True:
            if stop + 2 > limit:
                raise ValueError("truncated encoding")
            if buf[stop] == 0 and buf[stop + 1] == 0:
                return ident, pos, start, stop, stop + 2
            stop = _read(buf, stop, limit, depth + 1)[_END]
    else:
        size = first & 0x7F
        if size > 4:
            raise ValueError("bad length")
        stop = start + size + int.from_bytes(buf[start:start + size], "big")
        start += size
    if stop > limit:
        raise ValueError("truncated encoding")
    return ident, pos, start, stop, stop


def _children(buf: bytes, el: tuple, limit: int, what: str) -> list[tuple]:
    ident, _, pos, stop, _ = el
    if not ident & 0x20:
        raise CmsError("cms-malformed", f"{what}: primitive element {ident:#04x} where a constructed one belongs")
    out = []
    while pos < stop:
        if len(out) == limit:
            raise CmsError("cms-malformed", f"more than {limit} {what}")
        child = _read(buf, pos, stop)
        out.append(child)
        pos = child[_END]
    return out


def _expect(el: tuple | None, ident: int, what: str) -> tuple:
    if el is None or el[_ID] != ident:
        found = "nothing" if el is None else f"tag {el[_ID]:#04x}"
        raise CmsError("cms-malformed", f"{what}: expected tag {ident:#04x}, found {found}")
    return el


class _Fields:
    """The fields of a SEQUENCE, taken in order; optional ones by their tag."""

    def __init__(self, buf: bytes, seq: tuple | None, what: str):
        self.buf, self.what, self.i = buf, what, 0
        self.items = _children(buf, _expect(seq, 0x30, what), 16, f"fields of {what}")

    def take(self, ident: int, what: str) -> tuple:
        return _expect(self.next(), ident, f"{self.what}: {what}")

    def optional(self, ident: int) -> tuple | None:
        if self.i < len(self.items) and self.items[self.i][_ID] == ident:
            return self.next()
        return None

    def next(self) -> tuple | None:
        """The next field whatever its tag, or None at the end."""
        if self.i == len(self.items):
            return None
        self.i += 1
        return self.items[self.i - 1]

    def done(self) -> None:
        if self.i != len(self.items):
            raise CmsError("cms-malformed", f"{self.what}: unexpected tag {self.items[self.i][_ID]:#04x}")


def _contents(buf: bytes, el: tuple) -> bytes:
    return buf[el[_START]:el[_STOP]]


def _encoding(buf: bytes, el: tuple) -> bytes:
    return buf[el[_POS]:el[_END]]


def _tlv(tag: bytes, contents) -> bytes:
    """The DER encoding of an element with a one-octet tag, from its contents (bytes or a buffer)."""
    size = len(contents)
    if size < 0x80:
        return tag + bytes((size,)) + contents
    octets = (size.bit_length() + 7) // 8
    return tag + bytes((0x80 | octets,)) + size.to_bytes(octets, "big") + contents


@functools.lru_cache(maxsize=256)
def _dotted(encoding: bytes) -> str:
    return core.ObjectIdentifier.load(encoding).dotted


def _oid(buf: bytes, el: tuple | None) -> str:
    return _dotted(_encoding(buf, _expect(el, 0x06, "object identifier")))


def _integer(buf: bytes, el: tuple | None, what: str) -> int:
    contents = _contents(buf, _expect(el, 0x02, what))
    if not contents:
        raise CmsError("cms-malformed", f"{what} is an empty INTEGER")
    return int.from_bytes(contents, "big", signed=True)


def _octets(buf: bytes, el: tuple | None, what: str, depth: int = 0) -> bytes:
    """An OCTET STRING's value; BER may split it into a constructed string of pieces."""
    if el is not None and el[_ID] == 0x04:
        return _contents(buf, el)
    _expect(el, 0x24, what)
    if depth > 4:
        raise CmsError("cms-malformed", f"{what} nested too deeply")
    return b"".join(_octets(buf, piece, what, depth + 1) for piece in _children(buf, el, _MAX_PIECES, f"pieces of {what}"))


def _algorithm(buf: bytes, el: tuple | None, what: str) -> tuple[str, tuple | None]:
    """An AlgorithmIdentifier: its dotted OID and its parameters, if any."""
    fields = _Fields(buf, el, what)
    oid = _oid(buf, fields.take(0x06, "algorithm"))
    params = fields.next()
    fields.done()
    return oid, params


# Most CMS is DER in one common shape. cryptography's declarative ASN.1 reads that shape in
# one call, several times faster than the walker. It is strict DER (sorted SETs, minimal
# lengths, no trailing bytes) and the shapes below are narrow; whatever it does not read,
# or reads into something out of the ordinary, is left to the walker, which reads all of
# BER and names every error. So both give the same SignedData for what both read.

@asn1.sequence
class _DerAttribute:
    type: x509.ObjectIdentifier
    values: asn1.SetOf[asn1.TLV]


@asn1.sequence
class _DerIssuerSerial:
    issuer: asn1.TLV
    serial: int


@asn1.sequence
class _DerAlgorithm:  # parameters absent or NULL: RSA-PSS is left to the walker
    algorithm: x509.ObjectIdentifier
    parameters: asn1.Null | None


@asn1.sequence
class _DerSignerInfo:  # a signer without signed attributes does not fit: the walker reads it
    version: int
    sid: (asn1.Variant[_DerIssuerSerial, Literal["issuer-serial"]]
          | Annotated[asn1.Variant[bytes, Literal["key-id"]], asn1.Implicit(0)])
    digest_algorithm: _DerAlgorithm
    signed_attrs: Annotated[asn1.SetOf[_DerAttribute], asn1.Implicit(0)]
    signature_algorithm: _DerAlgorithm
    signature: bytes
    unsigned_attrs: Annotated[asn1.SetOf[asn1.TLV] | None, asn1.Implicit(1)]


@asn1.sequence
class _DerEncapContentInfo:
    content_type: x509.ObjectIdentifier
    content: Annotated[bytes | None, asn1.Explicit(0)]


@asn1.sequence
class _DerSignedData:
    version: int
    digest_algorithms: asn1.SetOf[asn1.TLV]
    encap_content_info: _DerEncapContentInfo
    certificates: Annotated[asn1.SetOf[asn1.TLV] | None, asn1.Implicit(0)]
    crls: Annotated[asn1.SetOf[asn1.TLV] | None, asn1.Implicit(1)]
    signer_infos: asn1.SetOf[_DerSignerInfo]


@asn1.sequence
class _DerContentInfo:
    content_type: x509.ObjectIdentifier
    content: Annotated[_DerSignedData, asn1.Explicit(0)]


class _Decline(Exception):
    """The DER reader leaves this input to the walker."""


def _read_der(der: bytes) -> SignedData | None:
    try:
        info = asn1.decode_der(_DerContentInfo, der)
        if info.content_type != _OID_SIGNED_DATA:
            return None
        sd = info.content
        _limited(sd.digest_algorithms, MAX_SIGNERS)
        certs = []
        for choice in _limited(sd.certificates, MAX_CERTS):
            if choice.tag_bytes == b"\x30":
                certs.append(certificate(_tlv(b"\x30", choice.data)))
            elif not b"\xa0" <= choice.tag_bytes <= b"\xa3":
                return None
        crls = []
        for choice in _limited(sd.crls, MAX_CRLS):
            if choice.tag_bytes == b"\x30":
                crls.append(_tlv(b"\x30", choice.data))
            elif choice.tag_bytes != b"\xa1":
                return None
        eci = sd.encap_content_info
        return SignedData(version=sd.version, content_type=_dotted_oid(eci.content_type), content=eci.content,
                          certificates=certs, crls=crls,
                          signers=[_der_signer(si) for si in _limited(sd.signer_infos, MAX_SIGNERS)])
    except (_Decline, *_DECODE_ERRORS):
        return None


def _limited(items: asn1.SetOf | None, limit: int) -> list:
    items = items.as_list() if items is not None else []
    if len(items) > limit:
        raise _Decline
    return items


def _der_signer(si: _DerSignerInfo) -> SignerInfo:
    issuer_serial = key_id = None
    if si.sid.tag == "key-id":
        key_id = si.sid.value
    elif si.sid.value.issuer.tag_bytes == b"\x30":
        issuer_serial = (_tlv(b"\x30", si.sid.value.issuer.data), si.sid.value.serial)
    else:
        raise _Decline
    sig_name = _signature_name(si.signature_algorithm.algorithm)
    if sig_name == "rsassa_pss":
        raise _Decline
    attrs = _limited(si.signed_attrs, MAX_SIGNED_ATTRS)
    if not attrs:
        raise _Decline
    single: dict[x509.ObjectIdentifier, asn1.TLV] = {}  # the one value of each attribute in _SINGLE_VALUED
    seen = set()
    for attr in attrs:
        oid = attr.type
        if oid in seen:
            raise _Decline
        seen.add(oid)
        values = _limited(attr.values, MAX_SIGNED_ATTRS)
        tags = _SINGLE_VALUED.get(oid)
        if tags is not None:
            if len(values) != 1 or values[0].tag_bytes not in tags:
                raise _Decline
            single[oid] = values[0]
    content_type = single.get(_OID_CONTENT_TYPE)
    digest = single.get(_OID_MESSAGE_DIGEST)
    return SignerInfo(
        sid_issuer_serial=issuer_serial,
        sid_key_id=key_id,
        digest_algorithm=_digest_name(si.digest_algorithm.algorithm),
        signature_algorithm=sig_name,
        has_signed_attrs=True,
        _signature=si.signature,
        # the SET as signed (RFC 5652 section 5.4): the decoding is strict DER, so encoding
        # it again gives back the very bytes that were read
        _signed_attrs=asn1.encode_der(si.signed_attrs),
        _content_type=_dotted(_tlv(b"\x06", content_type.data)) if content_type is not None else None,
        _message_digest=bytes(digest.data) if digest is not None else None,
        _pss=None,
    )


# OIDs compare and hash as objects, cheaper than reading their dotted text each time.
_OID_SIGNED_DATA = x509.ObjectIdentifier(ID_SIGNED_DATA)
_OID_CONTENT_TYPE = x509.ObjectIdentifier(_ID_CONTENT_TYPE)
_OID_MESSAGE_DIGEST = x509.ObjectIdentifier(_ID_MESSAGE_DIGEST)
_OID_SIGNING_TIME = x509.ObjectIdentifier(_ID_SIGNING_TIME)
# The attributes RFC 5652 section 11 allows one value, and the tags the DER reader takes for it.
_SINGLE_VALUED = {_OID_CONTENT_TYPE: (b"\x06",), _OID_MESSAGE_DIGEST: (b"\x04",),
                  _OID_SIGNING_TIME: (b"\x17", b"\x18")}


@functools.lru_cache(maxsize=256)
def _dotted_oid(oid: x509.ObjectIdentifier) -> str:
    return oid.dotted_string


@functools.lru_cache(maxsize=256)
def _signature_name(oid: x509.ObjectIdentifier) -> str:
    return algos.SignedDigestAlgorithmId.map(oid.dotted_string)


@functools.lru_cache(maxsize=256)
def _digest_name(oid: x509.ObjectIdentifier) -> str:
    return algos.DigestAlgorithmId.map(oid.dotted_string)


def _parse(der: bytes) -> SignedData:
    return _read_der(der) or _walk(der)


def _walk(der: bytes) -> SignedData:
    try:
        top = _read(der, 0, len(der))
        if top[_END] != len(der):
            raise CmsError("cms-malformed", f"{len(der) - top[_END]} bytes after the ContentInfo")
        info = _Fields(der, top, "ContentInfo")
        content_type = _oid(der, info.take(0x06, "contentType"))
        if content_type != ID_SIGNED_DATA:
            raise CmsError("cms-malformed", f"content type {content_type} is not SignedData")
        wrapper = info.optional(0xA0)
        info.done()
        inner = _children(der, wrapper, 1, "SignedData") if wrapper is not None else []
        if not inner:
            raise CmsError("cms-malformed", "SignedData is missing")
        sd = _Fields(der, inner[0], "SignedData")
        version = _integer(der, sd.take(0x02, "version"), "version")
        _children(der, sd.take(0x31, "digestAlgorithms"), MAX_SIGNERS, "digest algorithms")
        eci = _Fields(der, sd.take(0x30, "encapContentInfo"), "encapContentInfo")
        econtent_type = _oid(der, eci.take(0x06, "eContentType"))
        explicit = eci.optional(0xA0)
        eci.done()
        content = None
        if explicit is not None:
            wrapped = _children(der, explicit, 1, "eContent")
            # CMS always wraps eContent in an OCTET STRING
            content = _octets(der, wrapped[0] if wrapped else None, "eContent")

        certs = []
        cert_set = sd.optional(0xA0)
        for choice in _children(der, cert_set, MAX_CERTS, "certificates") if cert_set else ():
            if choice[_ID] == 0x30:
                certs.append(certificate(_encoding(der, choice)))
            elif not 0xA0 <= choice[_ID] <= 0xA3:  # attribute and other certificates are of no use here
                raise CmsError("cms-malformed", f"certificate choice with tag {choice[_ID]:#04x}")
        crls = []
        crl_set = sd.optional(0xA1)
        for choice in _children(der, crl_set, MAX_CRLS, "CRLs") if crl_set else ():
            if choice[_ID] == 0x30:
                crls.append(_encoding(der, choice))
            elif choice[_ID] != 0xA1:  # other revocation information formats
                raise CmsError("cms-malformed", f"revocation choice with tag {choice[_ID]:#04x}")
        signers = [_signer(der, s) for s in _children(der, sd.take(0x31, "signerInfos"), MAX_SIGNERS, "signers")]
        sd.done()
        return SignedData(version=version, content_type=econtent_type, content=content,
                          certificates=certs, crls=crls, signers=signers)
    except _DECODE_ERRORS as e:
        raise CmsError("cms-malformed", f"bad CMS structure: {e}") from None


def _signer(der: bytes, el: tuple) -> SignerInfo:
    si = _Fields(der, el, "SignerInfo")
    _integer(der, si.take(0x02, "version"), "SignerInfo version")
    issuer_serial = key_id = None
    sid = si.optional(0x80)
    if sid is not None:
        key_id = _contents(der, sid)
    else:
        ias = _Fields(der, si.take(0x30, "sid"), "IssuerAndSerialNumber")
        issuer = _encoding(der, ias.take(0x30, "issuer"))
        issuer_serial = (issuer, _integer(der, ias.take(0x02, "serialNumber"), "serialNumber"))
        ias.done()
    digest_oid, _ = _algorithm(der, si.next(), "digestAlgorithm")

    attrs = si.optional(0xA0)
    values: dict[str, list[tuple]] = {}
    if attrs is not None:
        for attr in _children(der, attrs, MAX_SIGNED_ATTRS, "signed attributes"):
            fields = _Fields(der, attr, "Attribute")
            oid = _oid(der, fields.take(0x06, "attrType"))
            if oid in values:
                raise CmsError("cms-malformed", f"signed attribute {oid} appears twice")
            values[oid] = _children(der, fields.take(0x31, "attrValues"), MAX_SIGNED_ATTRS, "attribute values")
            fields.done()
        if not values:
            raise CmsError("cms-malformed", "empty signed attributes")  # SET SIZE (1..MAX)
    content_type = _single(values, _ID_CONTENT_TYPE)
    digest = _single(values, _ID_MESSAGE_DIGEST)
    signing_time = _single(values, _ID_SIGNING_TIME)
    if signing_time is not None and signing_time[_ID] not in (0x17, 0x18):  # UTCTime, GeneralizedTime
        raise CmsError("cms-malformed", "signing-time is not a time")

    sig_oid, params = _algorithm(der, si.next(), "signatureAlgorithm")
    sig_name = algos.SignedDigestAlgorithmId.map(sig_oid)
    pss = _pss(_encoding(der, params) if params else None) if sig_name == "rsassa_pss" else None
    signature = _octets(der, si.next(), "signature")
    si.optional(0xA1)  # unsigned attributes
    si.done()
    return SignerInfo(
        sid_issuer_serial=issuer_serial,
        sid_key_id=key_id,
        digest_algorithm=algos.DigestAlgorithmId.map(digest_oid),
        signature_algorithm=sig_name,
        has_signed_attrs=bool(values),
        _signature=signature,
        # the [0] IMPLICIT tag is replaced by the SET tag (RFC 5652 section 5.4)
        _signed_attrs=_tlv(b"\x31", _contents(der, attrs)) if values else None,
        _content_type=_oid(der, content_type) if content_type is not None else None,
        _message_digest=_octets(der, digest, "message-digest") if digest is not None else None,
        _pss=pss,
    )


def _pss(params: bytes | None) -> tuple[str, str | None, int]:
    if params is None:  # RFC 4056: present when signing
        raise CmsError("cms-malformed", "RSA-PSS without parameters")
    p = algos.RSASSAPSSParams.load(params)
    if p["trailer_field"].native != "trailer_field_bc":
        raise CmsError("cms-malformed", "RSA-PSS trailer field is not 1")
    mgf = p["mask_gen_algorithm"]
    mgf_hash = mgf["parameters"]["algorithm"].native if mgf["algorithm"].native == "mgf1" else None
    salt = p["salt_length"].native
    if not 0 <= salt <= 4096:  # far more than a 16384-bit key leaves room for
        raise CmsError("cms-malformed", f"RSA-PSS salt length {salt}")
    return p["hash_algorithm"]["algorithm"].native, mgf_hash, salt


def _single(values: dict, oid: str) -> tuple | None:
    """The value of a signed attribute that must have exactly one (RFC 5652 section 11), or None."""
    if oid not in values:
        return None
    if len(values[oid]) != 1:
        raise CmsError("cms-malformed", f"signed attribute {oid} must have one value")
    return values[oid][0]


# ---- verifying --------------------------------------------------------------

def signer_certificate(sd: SignedData, signer: SignerInfo,
                       extra: Iterable[x509.Certificate] = ()) -> x509.Certificate:
    """The certificate, from sd then extra, that the signerInfo's sid names."""
    for cert in [*sd.certificates, *extra]:
        if signer.sid_issuer_serial is not None:
            # the sid is copied from the certificate, so the issuer's encoding is compared as is
            if _issuer_serial(cert) == signer.sid_issuer_serial:
                return cert
        elif signer.sid_key_id is not None and _key_id(cert) == signer.sid_key_id:
            return cert
    raise CmsError("cms-signer-not-found", "no certificate matches the signer identifier")


@functools.lru_cache(maxsize=256)
def certificate(der: bytes) -> x509.Certificate:
    """The certificate a DER encoding holds, as one object per encoding: the memos below,
    keyed by the object, then hold across loads, as for the one signer of a bundle of vouchers."""
    return x509.load_der_x509_certificate(der)


def _per_certificate(fn: Callable[[x509.Certificate], object]) -> Callable:
    """Memoize fn by the certificate object itself. Hashing a certificate costs more than most
    of what is memoized, so entries are keyed by id(); each entry holds its certificate, so
    that id cannot name another object while the entry exists."""
    memo: dict[int, tuple[x509.Certificate, object]] = {}
    lock = threading.Lock()

    @functools.wraps(fn)
    def memoized(cert: x509.Certificate):
        hit = memo.get(id(cert))
        if hit is not None:
            return hit[1]
        value = fn(cert)
        with lock:
            if len(memo) >= 256:
                memo.pop(next(iter(memo)))
            memo[id(cert)] = (cert, value)
        return value
    return memoized


@_per_certificate
def _issuer_serial(cert: x509.Certificate) -> tuple[bytes, int]:
    """The certificate's issuer name as encoded, and its serial number: what an issuerAndSerialNumber holds."""
    der = cert.public_bytes(Encoding.DER)
    tbs = _Fields(der, _Fields(der, _read(der, 0, len(der)), "Certificate").next(), "tbsCertificate")
    tbs.optional(0xA0)  # version
    tbs.take(0x02, "serialNumber")
    tbs.take(0x30, "signature")
    return _encoding(der, tbs.take(0x30, "issuer")), cert.serial_number


def _key_id(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except (x509.ExtensionNotFound, ValueError):
        return None


def verify_signer(sd: SignedData, signer: SignerInfo, cert: x509.Certificate,
                  content: bytes | None = None) -> None:
    """Check one signerInfo against cert; content is the detached content, if any."""
    if sd.content is not None:
        if content is not None and content != sd.content:
            raise CmsError("cms-digest-mismatch", "the given content differs from the encapsulated content")
        content = sd.content
    elif content is None:
        raise CmsError("cms-malformed", "detached signature and no content given")

    check = _verifier(signer, *_public_key(cert))
    if signer.has_signed_attrs:
        if signer._content_type is None or signer._message_digest is None:
            raise CmsError("cms-malformed", "signed attributes lack content-type or message-digest")
        if signer._content_type != sd.content_type:
            raise CmsError("cms-content-type-mismatch",
                           f"content-type attribute {signer._content_type} but eContentType {sd.content_type}")
        if not hmac.compare_digest(signer._message_digest, _digest(signer.digest_algorithm, content)):
            raise CmsError("cms-digest-mismatch", "message-digest does not match the content")
        signed = signer._signed_attrs
    else:
        # RFC 5652 section 5.3; RFC 8366bis makes the attributes mandatory for vouchers
        if sd.content_type != ID_DATA:
            raise CmsError("cms-no-signed-attrs", f"no signed attributes for eContentType {sd.content_type}")
        signed = content
    try:
        check(signed)
    except InvalidSignature:
        raise CmsError("cms-signature-invalid", "the signature does not verify") from None


# isinstance against these ABCs is slow (their classes are registered, which Python does not
# cache), so a key's kind is found once per certificate
_KEY_KINDS = ((rsa.RSAPublicKey, "rsa"), (ec.EllipticCurvePublicKey, "ec"), (ed25519.Ed25519PublicKey, "ed25519"))


@_per_certificate
def _public_key(cert: x509.Certificate) -> tuple[object, str | None]:
    """The certificate's key and its kind: rsa, ec (on a supported curve), ed25519 or None."""
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise CmsError("cms-unsupported-algorithm", "the certificate's key type is not supported") from None
    kind = next((name for cls, name in _KEY_KINDS if isinstance(key, cls)), None)
    if kind == "ec":
        _check_curve(key.curve)
    return key, kind


def verify(sd: SignedData, content: bytes | None = None,
           extra_certs: Iterable[x509.Certificate] = ()) -> list[x509.Certificate]:
    """Verify every signerInfo; the signer certificates, in signer order."""
    if not sd.signers:
        raise CmsError("cms-unsigned", "the CMS has no signer")
    extra = list(extra_certs)
    found = []
    for signer in sd.signers:
        cert = signer_certificate(sd, signer, extra)
        verify_signer(sd, signer, cert, content)
        found.append(cert)
    return found


def _verifier(signer: SignerInfo, key, kind: str | None) -> Callable[[bytes], None]:
    """What checks the signature over some bytes; refuses what is unsupported before any work."""
    name = signer.signature_algorithm
    digest = _hash(signer.digest_algorithm)
    if name == "rsassa_pkcs1v15" or name in _RSA_WITH:
        _same_hash(signer, _RSA_WITH.get(name))
        _key_type(kind, "rsa")
        return lambda data: key.verify(signer._signature, data, padding.PKCS1v15(), digest)
    if name == "rsassa_pss":
        pss_hash, mgf_hash, salt = signer._pss
        _same_hash(signer, pss_hash)
        if mgf_hash is None:
            raise CmsError("cms-unsupported-algorithm", "RSA-PSS mask generation is not MGF1")
        pad = padding.PSS(mgf=padding.MGF1(_hash(mgf_hash)), salt_length=salt)
        _key_type(kind, "rsa")
        return lambda data: key.verify(signer._signature, data, pad, digest)
    if name in ("ecdsa", _ID_EC_PUBLIC_KEY) or name in _ECDSA_WITH:
        _same_hash(signer, _ECDSA_WITH.get(name))
        _key_type(kind, "ec")
        ecdsa = _ecdsa(signer.digest_algorithm)
        return lambda data: key.verify(signer._signature, data, ecdsa)
    if name == "ed25519":
        _key_type(kind, "ed25519")
        return lambda data: key.verify(signer._signature, data)
    raise CmsError("cms-unsupported-algorithm", f"signature algorithm {name} not supported")


def _same_hash(signer: SignerInfo, named: str | None) -> None:
    """A signature algorithm that names a hash must agree with the digestAlgorithm."""
    if named is not None and named != signer.digest_algorithm:
        raise CmsError("cms-unsupported-algorithm",
                       f"{signer.signature_algorithm} with digest algorithm {signer.digest_algorithm}")


def _key_type(kind: str | None, wanted: str) -> None:
    if kind != wanted:
        raise CmsError("cms-signature-invalid", "the certificate's key does not fit the signature algorithm")


def _check_curve(curve: ec.EllipticCurve) -> None:
    if curve.name not in _CURVES:
        raise CmsError("cms-unsupported-algorithm", f"elliptic curve {curve.name} not supported")


@functools.lru_cache(maxsize=None)  # one per hash name; the objects hold no state
def _hash(name: str) -> hashes.HashAlgorithm:
    if name in _WEAK_HASHES:
        raise CmsError("cms-unsupported-algorithm", f"digest algorithm {name} is too weak")
    if name not in _HASHES:
        raise CmsError("cms-unsupported-algorithm", f"digest algorithm {name} not supported")
    return _HASHES[name]()


@functools.lru_cache(maxsize=None)  # one per hash name
def _ecdsa(digest: str) -> ec.ECDSA:
    return ec.ECDSA(_hash(digest))


def _digest(name: str, data: bytes) -> bytes:
    # through the OpenSSL that checks the signatures: hashlib's separate libcrypto measured
    # slower per voucher, its code being one more thing to fetch
    h = hashes.Hash(_hash(name))  # _hash refuses what is weak or unknown
    h.update(data)
    return h.finalize()


# ---- making -----------------------------------------------------------------

def sign(content: bytes, key, cert: x509.Certificate, *, chain: Iterable[x509.Certificate] = (),
         content_type: str = ID_DATA, detached: bool = False, signed_attrs: bool = True,
         digest: str = "sha256", signing_time: datetime | None = None) -> bytes:
    """A DER ContentInfo(SignedData) with one signer, identified by issuer and serial number.

    RSA keys sign with PKCS#1 v1.5 and EC keys with ECDSA, both over `digest`;
    Ed25519 keys sign pure Ed25519 with SHA-512 as the digest algorithm
    (RFC 8419), whatever `digest` says. A naive signing_time is taken as UTC.
    """
    if isinstance(key, ed25519.Ed25519PrivateKey):
        digest = "sha512"
        sig_alg = "ed25519"
    elif isinstance(key, rsa.RSAPrivateKey):
        sig_alg = "rsassa_pkcs1v15"
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        _check_curve(key.curve)
        sig_alg = f"{digest}_ecdsa"
    else:
        raise CmsError("cms-unsupported-algorithm", f"cannot sign with a {type(key).__name__}")
    hash_alg = _hash(digest)
    if key.public_key() != cert.public_key():
        raise ValueError("the key does not belong to the certificate")
    if not signed_attrs and content_type != ID_DATA:
        raise CmsError("cms-no-signed-attrs", "only id-data content may be signed without signed attributes")
    certs = [cert, *chain]
    if len(certs) > MAX_CERTS:
        raise ValueError(f"more than {MAX_CERTS} certificates")

    attrs = None
    if signed_attrs:
        attrs = [
            {"type": "content_type", "values": [content_type]},
            {"type": "message_digest", "values": [_digest(digest, content)]},
        ]
        if signing_time is not None:
            attrs.append({"type": "signing_time", "values": [_time(signing_time)]})
        attrs = cms.CMSAttributes(attrs)
        signature = _sign_bytes(key, hash_alg, attrs.dump())  # the SET encoding (RFC 5652 section 5.4)
    else:
        signature = _sign_bytes(key, hash_alg, content)

    a_cert = asn1_x509.Certificate.load(cert.public_bytes(Encoding.DER))
    signer = {
        "version": "v1",
        "sid": cms.SignerIdentifier(name="issuer_and_serial_number", value={
            "issuer": a_cert.issuer, "serial_number": a_cert.serial_number}),
        "digest_algorithm": _digest_algorithm(digest),
        "signature_algorithm": algos.SignedDigestAlgorithm({"algorithm": sig_alg}),
        "signature": signature,
    }
    if attrs is not None:
        signer["signed_attrs"] = attrs
    eci = {"content_type": content_type}
    if not detached:
        eci["content"] = content
    return _content_info({
        # RFC 5652 section 5.1: 3 once the eContentType is not id-data
        "version": "v1" if content_type == ID_DATA else "v3",
        "digest_algorithms": [_digest_algorithm(digest)],
        "encap_content_info": eci,
        "certificates": _cert_choices(certs),
        "signer_infos": [signer],
    })


def certs_only(certs: Iterable[x509.Certificate]) -> bytes:
    """A SignedData with certificates and no signer or content (`openssl crl2pkcs7 -nocrl`)."""
    certs = list(certs)
    if len(certs) > MAX_CERTS:
        raise ValueError(f"more than {MAX_CERTS} certificates")
    sd = {
        "version": "v1",
        "digest_algorithms": [],
        "encap_content_info": {"content_type": "data"},
        "signer_infos": [],
    }
    if certs:
        sd["certificates"] = _cert_choices(certs)
    return _content_info(sd)


def _content_info(signed_data: dict) -> bytes:
    return cms.ContentInfo({"content_type": "signed_data", "content": cms.SignedData(signed_data)}).dump()


def _cert_choices(certs: list[x509.Certificate]) -> list:
    return [cms.CertificateChoices(name="certificate",
                                   value=asn1_x509.Certificate.load(c.public_bytes(Encoding.DER)))
            for c in certs]


def _digest_algorithm(name: str) -> algos.DigestAlgorithm:
    alg = algos.DigestAlgorithm({"algorithm": name})
    alg["parameters"] = None  # RFC 5754: absent, where asn1crypto would write NULL
    return alg


def _time(when: datetime) -> cms.Time:
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    when = when.astimezone(timezone.utc).replace(microsecond=0)
    # RFC 5652 section 11.3: UTCTime for 1950 to 2049
    kind = "utc_time" if 1950 <= when.year < 2050 else "generalized_time"
    return cms.Time(name=kind, value=when)


def _sign_bytes(key, hash_alg: hashes.HashAlgorithm, data: bytes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hash_alg)
    return key.sign(data, ec.ECDSA(hash_alg))
