"""CMS SignedData (RFC 5652): read, verify and make signatures.

asn1crypto handles the ASN.1 structure, `cryptography` the signature maths.
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
import hmac
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterable

from asn1crypto import algos, cms, core, parser, pem
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding

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


class CmsError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class SignerInfo:
    sid_issuer_serial: tuple[bytes, int] | None
    sid_key_id: bytes | None
    digest_algorithm: str
    signature_algorithm: str
    has_signed_attrs: bool
    signing_time: datetime | None
    _signature: bytes = field(default=b"", repr=False)
    # DER of the signed attributes as a SET (tag 0x31): what the signature covers
    _signed_attrs: bytes | None = field(default=None, repr=False)
    _content_type: str | None = field(default=None, repr=False)
    _message_digest: bytes | None = field(default=None, repr=False)
    # RSA-PSS (hash, MGF1 hash or None for another mask function, salt length)
    _pss: tuple[str, str | None, int] | None = field(default=None, repr=False)


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


def _parse(der: bytes) -> SignedData:
    try:
        info = cms.ContentInfo.load(der, strict=True)
        if info["content_type"].dotted != ID_SIGNED_DATA:
            raise CmsError("cms-malformed", f"content type {info['content_type'].dotted} is not SignedData")
        sd = info["content"]
        if not isinstance(sd, cms.SignedData):
            raise CmsError("cms-malformed", "SignedData is missing")
        # asn1crypto reads a v1 encapContentInfo as PKCS#7 ContentInfo; CMS always wraps eContent in an OCTET STRING
        eci = cms.EncapsulatedContentInfo.load(sd["encap_content_info"].dump())
        content = None if isinstance(eci["content"], core.Void) else bytes(eci["content"])

        certs = []
        for choice in _bounded(sd["certificates"], MAX_CERTS, "certificates"):
            if choice.name == "certificate":  # attribute certificates are of no use here
                certs.append(x509.load_der_x509_certificate(choice.chosen.dump()))
        crls = [choice.chosen.dump() for choice in _bounded(sd["crls"], MAX_CRLS, "CRLs")
                if choice.name == "crl"]
        signers = [_signer(s) for s in _bounded(sd["signer_infos"], MAX_SIGNERS, "signers")]
        return SignedData(
            version=int(sd["version"]),
            content_type=eci["content_type"].dotted,
            content=content,
            certificates=certs,
            crls=crls,
            signers=signers,
        )
    except _DECODE_ERRORS as e:
        raise CmsError("cms-malformed", f"bad CMS structure: {e}") from None


def _signer(si: cms.SignerInfo) -> SignerInfo:
    sid = si["sid"]
    issuer_serial = key_id = None
    if sid.name == "issuer_and_serial_number":
        issuer_serial = (sid.chosen["issuer"].dump(), sid.chosen["serial_number"].native)
    else:
        key_id = sid.chosen.native

    attrs = si["signed_attrs"]
    values = {}
    if not isinstance(attrs, core.Void):
        for attr in _bounded(attrs, MAX_SIGNED_ATTRS, "signed attributes"):
            oid = attr["type"].dotted
            if oid in values:
                raise CmsError("cms-malformed", f"signed attribute {oid} appears twice")
            values[oid] = attr["values"]
        if not values:
            raise CmsError("cms-malformed", "empty signed attributes")  # SET SIZE (1..MAX)
    content_type = _single(values, _ID_CONTENT_TYPE)
    digest = _single(values, _ID_MESSAGE_DIGEST)
    signing_time = _single(values, _ID_SIGNING_TIME)

    sig_alg = si["signature_algorithm"]
    pss = None
    if sig_alg["algorithm"].native == "rsassa_pss":
        params = sig_alg["parameters"]
        if isinstance(params, core.Void):  # RFC 4056: present when signing
            raise CmsError("cms-malformed", "RSA-PSS without parameters")
        if params["trailer_field"].native != "trailer_field_bc":
            raise CmsError("cms-malformed", "RSA-PSS trailer field is not 1")
        mgf = params["mask_gen_algorithm"]
        mgf_hash = mgf["parameters"]["algorithm"].native if mgf["algorithm"].native == "mgf1" else None
        salt = params["salt_length"].native
        if not 0 <= salt <= 4096:  # far more than a 16384-bit key leaves room for
            raise CmsError("cms-malformed", f"RSA-PSS salt length {salt}")
        pss = (params["hash_algorithm"]["algorithm"].native, mgf_hash, salt)

    return SignerInfo(
        sid_issuer_serial=issuer_serial,
        sid_key_id=key_id,
        digest_algorithm=si["digest_algorithm"]["algorithm"].native,
        signature_algorithm=sig_alg["algorithm"].native,
        has_signed_attrs=bool(values),
        signing_time=signing_time.native if signing_time is not None else None,
        _signature=si["signature"].native,
        # the [0] IMPLICIT tag is replaced by the SET tag (RFC 5652 section 5.4)
        _signed_attrs=parser.emit(0, 1, 17, attrs.contents) if values else None,
        _content_type=content_type.dotted if content_type is not None else None,
        _message_digest=digest.native if digest is not None else None,
        _pss=pss,
    )


def _single(values: dict, oid: str):
    """The value of a signed attribute that must have exactly one (RFC 5652 section 11), or None."""
    if oid not in values:
        return None
    if _count(values[oid].contents, 1) != 1:
        raise CmsError("cms-malformed", f"signed attribute {oid} must have one value")
    return values[oid][0]


def _bounded(items, limit: int, what: str):
    """items (an asn1crypto SET OF, possibly absent) once it is known to hold at most limit elements."""
    if isinstance(items, core.Void):
        return []
    if _count(items.contents, limit) > limit:
        raise CmsError("cms-malformed", f"more than {limit} {what}")
    return items


def _count(contents: bytes | None, limit: int) -> int:
    """How many encodings contents holds, counting no further than limit + 1.

    asn1crypto builds every element of a SET OF before one can ask its length,
    which for 16 MiB of tiny elements takes seconds and gigabytes.
    """
    n = pos = 0
    while contents and pos < len(contents) and n <= limit:
        pos = _skip(contents, pos, 0)
        n += 1
    return n


def _skip(buf: bytes, pos: int, depth: int) -> int:
    """The offset past the BER encoding that starts at pos."""
    if depth > 32:
        raise ValueError("encoding nested too deeply")
    if buf[pos] & 0x1F == 0x1F:  # high tag number: base-128 digits follow
        pos += 1
        while buf[pos] & 0x80:
            pos += 1
    pos += 1
    first = buf[pos]
    pos += 1
    if first == 0x80:  # indefinite length: elements up to an end-of-contents
        while buf[pos:pos + 2] != b"\0\0":
            pos = _skip(buf, pos, depth + 1)
        return pos + 2
    if first & 0x80:
        size = first & 0x7F
        length = int.from_bytes(buf[pos:pos + size], "big")
        pos += size
    else:
        length = first
    if pos + length > len(buf):
        raise ValueError("truncated encoding")
    return pos + length


# ---- verifying --------------------------------------------------------------

def signer_certificate(sd: SignedData, signer: SignerInfo,
                       extra: Iterable[x509.Certificate] = ()) -> x509.Certificate:
    """The certificate, from sd then extra, that the signerInfo's sid names."""
    for cert in [*sd.certificates, *extra]:
        if signer.sid_issuer_serial is not None:
            issuer, serial = signer.sid_issuer_serial
            # the sid is copied from the certificate, so its encoding is compared as is
            if cert.serial_number == serial and _issuer_der(cert) == issuer:
                return cert
        elif signer.sid_key_id is not None and _key_id(cert) == signer.sid_key_id:
            return cert
    raise CmsError("cms-signer-not-found", "no certificate matches the signer identifier")


def _issuer_der(cert: x509.Certificate) -> bytes:
    return asn1_x509.Certificate.load(cert.public_bytes(Encoding.DER)).issuer.dump()


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

    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise CmsError("cms-unsupported-algorithm", "the certificate's key type is not supported") from None
    check = _verifier(signer, key)
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


def _verifier(signer: SignerInfo, key) -> Callable[[bytes], None]:
    """What checks the signature over some bytes; refuses what is unsupported before any work."""
    name = signer.signature_algorithm
    digest = _hash(signer.digest_algorithm)
    if name == "rsassa_pkcs1v15" or name in _RSA_WITH:
        _same_hash(signer, _RSA_WITH.get(name))
        rsa_key = _key_type(key, rsa.RSAPublicKey)
        return lambda data: rsa_key.verify(signer._signature, data, padding.PKCS1v15(), digest)
    if name == "rsassa_pss":
        pss_hash, mgf_hash, salt = signer._pss
        _same_hash(signer, pss_hash)
        if mgf_hash is None:
            raise CmsError("cms-unsupported-algorithm", "RSA-PSS mask generation is not MGF1")
        pad = padding.PSS(mgf=padding.MGF1(_hash(mgf_hash)), salt_length=salt)
        rsa_key = _key_type(key, rsa.RSAPublicKey)
        return lambda data: rsa_key.verify(signer._signature, data, pad, digest)
    if name in ("ecdsa", _ID_EC_PUBLIC_KEY) or name in _ECDSA_WITH:
        _same_hash(signer, _ECDSA_WITH.get(name))
        ec_key = _key_type(key, ec.EllipticCurvePublicKey)
        _check_curve(ec_key.curve)
        return lambda data: ec_key.verify(signer._signature, data, ec.ECDSA(digest))
    if name == "ed25519":
        ed_key = _key_type(key, ed25519.Ed25519PublicKey)
        return lambda data: ed_key.verify(signer._signature, data)
    raise CmsError("cms-unsupported-algorithm", f"signature algorithm {name} not supported")


def _same_hash(signer: SignerInfo, named: str | None) -> None:
    """A signature algorithm that names a hash must agree with the digestAlgorithm."""
    if named is not None and named != signer.digest_algorithm:
        raise CmsError("cms-unsupported-algorithm",
                       f"{signer.signature_algorithm} with digest algorithm {signer.digest_algorithm}")


def _key_type(key, kind):
    if not isinstance(key, kind):
        raise CmsError("cms-signature-invalid", "the certificate's key does not fit the signature algorithm")
    return key


def _check_curve(curve: ec.EllipticCurve) -> None:
    if curve.name not in _CURVES:
        raise CmsError("cms-unsupported-algorithm", f"elliptic curve {curve.name} not supported")


def _hash(name: str) -> hashes.HashAlgorithm:
    if name in _WEAK_HASHES:
        raise CmsError("cms-unsupported-algorithm", f"digest algorithm {name} is too weak")
    if name not in _HASHES:
        raise CmsError("cms-unsupported-algorithm", f"digest algorithm {name} not supported")
    return _HASHES[name]()


def _digest(name: str, data: bytes) -> bytes:
    h = hashes.Hash(_hash(name))
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
