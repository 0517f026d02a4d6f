"""A SCEP client (RFC 8894): get a CA's certificates and enrol an RSA key with it.

asn1crypto builds and reads the CMS structures, `cryptography` does the maths and `cms`
checks the signatures of the CA's replies. HTTP goes through urllib, bounded in size and
time. Every problem is a ScepError whose code is a stable string; messages never hold key
material.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import os
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

from asn1crypto import algos, core, parser
from asn1crypto import cms as asn1_cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from backends.engine import cms
from backends.engine.x509 import certcheck
from backends.engine.cms import CmsError
from backends.engine.errors import EngineError

MAX_RESPONSE = 1 << 20
MAX_CAPS_RESPONSE = 64 << 10
MAX_CAPS = 64
MIN_RSA_BITS = 2048
# the requester's self-signed certificate only has to outlive a transaction, polls included
SIGNER_VALIDITY = timedelta(days=7)
SIGNER_BACKDATE = timedelta(minutes=10)

PKI_MESSAGE = "application/x-pki-message"
CA_CERT = "application/x-x509-ca-cert"
CA_RA_CERT = "application/x-x509-ca-ra-cert"

# RFC 8894 section 3.2.1: the SCEP signed attributes, under id-VeriSign pki attributes
_ATTR = "2.16.840.1.113733.1.9."
ID_MESSAGE_TYPE = _ATTR + "2"
ID_PKI_STATUS = _ATTR + "3"
ID_FAIL_INFO = _ATTR + "4"
ID_SENDER_NONCE = _ATTR + "5"
ID_RECIPIENT_NONCE = _ATTR + "6"
ID_TRANSACTION_ID = _ATTR + "7"
ID_FAIL_INFO_TEXT = "1.3.6.1.5.5.7.24.1"
_ID_CONTENT_TYPE = "1.2.840.113549.1.9.3"
_ID_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"

MSG_CERT_REP = "3"
MSG_PKCS_REQ = "19"
MSG_CERT_POLL = "20"
PKI_STATUS = {"0": "SUCCESS", "2": "FAILURE", "3": "PENDING"}
FAIL_INFO = {"0": "badAlg", "1": "badMessageCheck", "2": "badRequest", "3": "badTime", "4": "badCertId"}

_CIPHERS = {  # asn1crypto name: (key bytes, block bytes)
    "aes128_cbc": (16, 16),
    "aes192_cbc": (24, 16),
    "aes256_cbc": (32, 16),
    "tripledes_3key": (24, 8),
}
# Single DES is read, never sent: some servers (micromdm's among them) encrypt every CertRep
# with it. What it hides is the issued certificate, which is public; the signature over the
# reply is what protects it.
_REPLY_CIPHERS = {**_CIPHERS, "des": (8, 8)}
_HASHES = {"sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha512": hashes.SHA512}
_DECODE_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError)


class ScepError(EngineError):
    def __init__(self, code: str, message: str, tag: str | None = None, *, fail_info: str | None = None):
        super().__init__(code, message, tag)
        self.fail_info = fail_info


@dataclass
class CACerts:
    ca: x509.Certificate
    recipient: x509.Certificate
    certificates: list[x509.Certificate]


@dataclass
class Transaction:
    transaction_id: str
    signer_cert: x509.Certificate
    subject: x509.Name


@dataclass
class Result:
    status: str
    certificate: x509.Certificate | None
    fail_info: str | None
    transaction_id: str


class _IssuerAndSubject(core.Sequence):
    """RFC 8894 section 3.3.3: what a CertPoll asks about."""
    _fields = [("issuer", asn1_x509.Name), ("subject", asn1_x509.Name)]


# ---- HTTP -----------------------------------------------------------------------------------

def _operation_url(url: str, operation: str, message: str | None = None) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ScepError("scep-unreachable", "the SCEP URL must be an http or https URL", "invalid-value")
    query = [("operation", operation)] + ([("message", message)] if message is not None else [])
    extra = urllib.parse.urlencode(query, quote_via=urllib.parse.quote, safe="")
    joined = f"{parts.query}&{extra}" if parts.query else extra
    return urllib.parse.urlunsplit(parts._replace(query=joined, fragment=""))


# no proxy from the environment: where trust-plane traffic goes is not a process-wide setting
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http(url: str, *, timeout: float, body: bytes | None = None,
          limit: int = MAX_RESPONSE) -> tuple[int, str, bytes]:
    """(HTTP status, content type, body) of a GET, or of a POST of a pkiMessage when body is given."""
    request = urllib.request.Request(url, data=body, method="GET" if body is None else "POST")
    if body is not None:
        request.add_header("Content-Type", PKI_MESSAGE)
    deadline = time.monotonic() + timeout
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.strip().isdigit() and int(length) > limit:
                raise ScepError("scep-bad-response", f"the SCEP reply is larger than {limit} bytes")
            chunks, size = [], 0
            while chunk := response.read(min(65536, limit + 1 - size)):
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    raise ScepError("scep-bad-response", f"the SCEP reply is larger than {limit} bytes")
                if time.monotonic() > deadline:
                    raise ScepError("scep-unreachable", f"the SCEP server took longer than {timeout} s")
            return response.status, response.headers.get_content_type(), b"".join(chunks)
    except urllib.error.HTTPError as e:
        e.close()
        return e.code, "", b""
    except urllib.error.URLError as e:
        raise ScepError("scep-unreachable", f"cannot reach the SCEP server: {_reason(e.reason)}") from None
    except (OSError, http.client.HTTPException) as e:
        raise ScepError("scep-unreachable", f"cannot reach the SCEP server: {_reason(e)}") from None


def _reason(e: object) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    return _printable(str(e) or type(e).__name__, 200)


def _printable(text: str, limit: int) -> str:
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


def _expect_ok(status: int, operation: str) -> None:
    if status != 200:
        raise ScepError("scep-unreachable", f"{operation} failed with HTTP status {status}")


# ---- GetCACaps and GetCACert ----------------------------------------------------------------

def get_ca_caps(url: str, *, timeout: float = 10.0) -> set[str]:
    """The capabilities the server lists (RFC 8894 section 3.5.2); empty when it lists none."""
    status, _, body = _http(_operation_url(url, "GetCACaps"), timeout=timeout, limit=MAX_CAPS_RESPONSE)
    if status == 404:
        return set()
    _expect_ok(status, "GetCACaps")
    caps = set()
    for line in body.decode("utf-8", "replace").splitlines():
        word = line.strip()
        if word and len(word) <= 64 and word.isprintable():
            caps.add(word)
        if len(caps) >= MAX_CAPS:
            break
    return caps


def _has(caps: set[str], name: str) -> bool:
    # servers differ in how they capitalise the keywords
    return name.lower() in {c.lower() for c in caps}


def get_ca_cert(url: str, *, timeout: float = 10.0) -> CACerts:
    """The CA certificate, and the RA certificate when the CA uses one (RFC 8894 section 4.2)."""
    status, content_type, body = _http(_operation_url(url, "GetCACert"), timeout=timeout)
    _expect_ok(status, "GetCACert")
    if content_type == CA_CERT:
        try:
            cert = x509.load_der_x509_certificate(body)
        except ValueError:
            raise ScepError("scep-bad-response", "GetCACert did not return a DER certificate") from None
        _readable(cert, "the certificate GetCACert returned")
        if _basic_ca(cert) is False:
            raise ScepError("scep-no-ca", "the certificate GetCACert returned is not a CA certificate")
        return CACerts(ca=cert, recipient=cert, certificates=[cert])
    if content_type != CA_RA_CERT:
        raise ScepError("scep-bad-response", f"GetCACert returned content type {_printable(content_type, 80)}")
    try:
        certs = cms.load(body).certificates
    except CmsError as e:
        raise ScepError("scep-bad-response", f"GetCACert returned bad PKCS#7: {e.message}") from None
    return _pick_ca([_readable(c, "a certificate GetCACert returned") for c in certs])


def _readable(cert: x509.Certificate, what: str) -> x509.Certificate:
    if not certcheck.readable(cert):
        raise ScepError("scep-bad-response", f"{what} has malformed names or extensions")
    return cert


def _basic_ca(cert: x509.Certificate) -> bool | None:
    """basicConstraints cA, or None when the certificate has no (readable) extension."""
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except (x509.ExtensionNotFound, ValueError):
        return None


def _can_encrypt_to(cert: x509.Certificate) -> bool:
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    except ValueError:
        return False
    return usage.key_encipherment


def _issued(issuer: x509.Certificate, cert: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _pick_ca(certs: list[x509.Certificate]) -> CACerts:
    cas = [c for c in certs if _basic_ca(c)]
    if not cas:
        raise ScepError("scep-no-ca", "GetCACert returned no CA certificate")
    # an RA certificate is one that is not a CA; the one to encrypt to must allow key encipherment
    ras = [c for c in certs if not _basic_ca(c) and _can_encrypt_to(c)]
    for ra in ras:
        for ca in cas:
            if _issued(ca, ra):
                return CACerts(ca=ca, recipient=ra, certificates=list(certs))
    # with a chain and no RA, the CA that issues is the one that has not issued another CA here
    leaves = [ca for ca in cas if not any(other is not ca and _issued(ca, other) for other in cas)]
    ca = (leaves or cas)[0]
    return CACerts(ca=ca, recipient=ras[0] if ras else ca, certificates=list(certs))


# ---- PKIOperation ---------------------------------------------------------------------------

def pkcs_req(url: str, ca: CACerts, key: rsa.RSAPrivateKey, csr: x509.CertificateSigningRequest, *,
             caps: set[str], now: datetime, timeout: float = 10.0,
             raise_on_failure: bool = True) -> tuple[Result, Transaction]:
    """Send a PKCSReq for csr (which carries any challenge password) and read the CertRep.

    A FAILURE reply raises ScepError scep-failed, unless raise_on_failure is false: then it
    is returned as a Result.
    """
    _check_key(key)
    if _spki(csr.public_key()) != _spki(key.public_key()):
        raise ValueError("the CSR is not for the given key")
    if not csr.is_signature_valid:
        raise ValueError("the CSR's signature does not verify")
    tx = Transaction(
        transaction_id=hashlib.sha256(_spki(key.public_key())).hexdigest(),
        signer_cert=_signer_cert(key, csr.subject, _utc(now)),
        subject=csr.subject,
    )
    result = _operation(url, ca, key, tx, MSG_PKCS_REQ, csr.public_bytes(Encoding.DER),
                        caps=caps, now=_utc(now), timeout=timeout, raise_on_failure=raise_on_failure)
    return result, tx


def cert_poll(url: str, ca: CACerts, key: rsa.RSAPrivateKey, tx: Transaction, *, caps: set[str],
              now: datetime, timeout: float = 10.0, raise_on_failure: bool = True) -> Result:
    """Ask again about a PENDING transaction (CertPoll, once called GetCertInitial).

    tx.signer_cert is replaced by a new self-signed certificate once the old one has expired.
    """
    _check_key(key)
    if _spki(tx.signer_cert.public_key()) != _spki(key.public_key()):
        raise ValueError("the transaction was started with another key")
    now = _utc(now)
    if now >= tx.signer_cert.not_valid_after_utc:
        tx.signer_cert = _signer_cert(key, tx.subject, now)
    content = _IssuerAndSubject({
        "issuer": _asn1_cert(ca.ca).subject,
        "subject": asn1_x509.Name.load(tx.subject.public_bytes()),
    }).dump()
    return _operation(url, ca, key, tx, MSG_CERT_POLL, content, caps=caps, now=now,
                      timeout=timeout, raise_on_failure=raise_on_failure)


def _check_key(key) -> None:
    if not isinstance(key, rsa.RSAPrivateKey):
        # the CA encrypts its reply to this key with RSA key transport
        raise ScepError("scep-key-unsupported", f"SCEP needs an RSA key, not {type(key).__name__}",
                        "invalid-value")
    if key.key_size < MIN_RSA_BITS:
        raise ScepError("scep-key-unsupported",
                        f"an RSA key of {key.key_size} bits is too weak (at least {MIN_RSA_BITS})", "invalid-value")


def _utc(when: datetime) -> datetime:
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)


def _spki(public_key) -> bytes:
    return public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _asn1_cert(cert: x509.Certificate) -> asn1_x509.Certificate:
    return asn1_x509.Certificate.load(cert.public_bytes(Encoding.DER))


def _signer_cert(key: rsa.RSAPrivateKey, subject: x509.Name, now: datetime) -> x509.Certificate:
    """The self-signed certificate a requester without one signs with (RFC 8894 section 2.3)."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - SIGNER_BACKDATE)
        .not_valid_after(now + SIGNER_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


def _digest_name(caps: set[str]) -> str:
    if _has(caps, "SHA-256") or _has(caps, "SCEPStandard"):
        return "sha256"
    if _has(caps, "SHA-512"):
        return "sha512"
    # a server that lists no SHA-2 digest predates RFC 8894; SHA-1 is the most it is known to take
    return "sha1"


def _cipher_name(caps: set[str]) -> str:
    if _has(caps, "AES") or _has(caps, "SCEPStandard"):
        return "aes128_cbc"
    # without AES, triple DES is the strongest cipher every SCEP server has
    return "tripledes_3key"


def _operation(url: str, ca: CACerts, key: rsa.RSAPrivateKey, tx: Transaction, message_type: str,
               content: bytes, *, caps: set[str], now: datetime, timeout: float,
               raise_on_failure: bool) -> Result:
    nonce = secrets.token_bytes(16)
    envelope = _envelope(content, ca.recipient, _cipher_name(caps))
    message = _signed_message(envelope, key, tx, message_type, nonce, _digest_name(caps), now)
    if _has(caps, "POSTPKIOperation") or _has(caps, "SCEPStandard"):  # the latter implies POST
        status, content_type, body = _http(_operation_url(url, "PKIOperation"), timeout=timeout, body=message)
    else:
        encoded = base64.b64encode(message).decode("ascii")
        status, content_type, body = _http(_operation_url(url, "PKIOperation", encoded), timeout=timeout)
    _expect_ok(status, "PKIOperation")
    if content_type != PKI_MESSAGE:
        raise ScepError("scep-bad-response",
                        f"PKIOperation returned content type {_printable(content_type, 80)}, not {PKI_MESSAGE}")
    # a reply signed with SHA-1 is taken from a server that lists SHA-1, or that we had to use it with
    sha1_ok = _has(caps, "SHA-1") or _digest_name(caps) == "sha1"
    result, why = _read_cert_rep(body, ca, key, tx, nonce, sha1_ok)
    if result.status == "FAILURE" and raise_on_failure:
        raise ScepError("scep-failed", f"the SCEP server refused the request: {why}", fail_info=result.fail_info)
    return result


# ---- making a pkiMessage --------------------------------------------------------------------

def _envelope(content: bytes, recipient: x509.Certificate, cipher_name: str) -> bytes:
    """A ContentInfo(EnvelopedData) of content for recipient (RFC 8894 section 3.2.2)."""
    public_key = recipient.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise ScepError("scep-bad-response", "the CA's encryption certificate does not have an RSA key")
    key_size, block = _CIPHERS[cipher_name]
    cek, iv = os.urandom(key_size), os.urandom(block)
    padder = sym_padding.PKCS7(block * 8).padder()
    encryptor = _cipher(cipher_name, cek, iv).encryptor()
    encrypted = encryptor.update(padder.update(content) + padder.finalize()) + encryptor.finalize()
    issuer_serial = _asn1_cert(recipient)
    enveloped = asn1_cms.EnvelopedData({
        "version": "v0",
        "recipient_infos": [asn1_cms.RecipientInfo(name="ktri", value={
            "version": "v0",
            "rid": asn1_cms.RecipientIdentifier(name="issuer_and_serial_number", value={
                "issuer": issuer_serial.issuer, "serial_number": issuer_serial.serial_number}),
            "key_encryption_algorithm": {"algorithm": "rsaes_pkcs1v15"},
            "encrypted_key": public_key.encrypt(cek, padding.PKCS1v15()),
        })],
        "encrypted_content_info": {
            "content_type": "data",
            "content_encryption_algorithm": algos.EncryptionAlgorithm(
                {"algorithm": cipher_name, "parameters": core.OctetString(iv)}),
            "encrypted_content": encrypted,
        },
    })
    return asn1_cms.ContentInfo({"content_type": "enveloped_data", "content": enveloped}).dump()


def _cipher(name: str, cek: bytes, iv: bytes) -> Cipher:
    if name == "des":
        algorithm = TripleDES(cek * 3)  # EDE with one key three times is DES
    elif name == "tripledes_3key":
        algorithm = TripleDES(cek)
    else:
        algorithm = algorithms.AES(cek)
    return Cipher(algorithm, modes.CBC(iv))


def _attribute(oid: str, value) -> asn1_cms.CMSAttribute:
    return asn1_cms.CMSAttribute({"type": oid, "values": [value]})


def _signed_message(envelope: bytes, key: rsa.RSAPrivateKey, tx: Transaction, message_type: str,
                    nonce: bytes, digest_name: str, now: datetime) -> bytes:
    """The pkiMessage: SignedData over the envelope with the SCEP attributes (RFC 8894 section 3.2.1)."""
    hash_alg = _HASHES[digest_name]()
    digest = hashes.Hash(hash_alg)
    digest.update(envelope)
    signing_time = now.replace(microsecond=0)
    attrs = asn1_cms.CMSAttributes([
        {"type": "content_type", "values": ["data"]},
        {"type": "message_digest", "values": [digest.finalize()]},
        {"type": "signing_time", "values": [asn1_cms.Time(
            name="utc_time" if 1950 <= signing_time.year < 2050 else "generalized_time", value=signing_time)]},
        _attribute(ID_MESSAGE_TYPE, core.PrintableString(message_type)),
        _attribute(ID_TRANSACTION_ID, core.PrintableString(tx.transaction_id)),
        _attribute(ID_SENDER_NONCE, core.OctetString(nonce)),
    ])
    # the signature covers the attributes encoded as a SET (RFC 5652 section 5.4)
    signature = key.sign(attrs.dump(), padding.PKCS1v15(), hash_alg)
    signer = _asn1_cert(tx.signer_cert)
    digest_algorithm = algos.DigestAlgorithm({"algorithm": digest_name})
    digest_algorithm["parameters"] = None  # RFC 5754: absent rather than NULL
    signed = asn1_cms.SignedData({
        "version": "v1",
        "digest_algorithms": [digest_algorithm],
        "encap_content_info": {"content_type": "data", "content": envelope},
        "certificates": [asn1_cms.CertificateChoices(name="certificate", value=signer)],
        "signer_infos": [{
            "version": "v1",
            "sid": asn1_cms.SignerIdentifier(name="issuer_and_serial_number", value={
                "issuer": signer.issuer, "serial_number": signer.serial_number}),
            "digest_algorithm": digest_algorithm,
            "signed_attrs": attrs,
            "signature_algorithm": {"algorithm": "rsassa_pkcs1v15"},
            "signature": signature,
        }],
    })
    return asn1_cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump()


# ---- reading a CertRep ----------------------------------------------------------------------

def _read_cert_rep(body: bytes, ca: CACerts, key: rsa.RSAPrivateKey, tx: Transaction,
                   nonce: bytes, sha1_ok: bool) -> tuple[Result, str | None]:
    """The checked CertRep, and for a FAILURE the reason in words."""
    if not body.startswith(b"\x30"):  # cms.load would also take PEM or base64 text
        raise ScepError("scep-bad-response", "the CertRep is not CMS SignedData: not DER")
    try:
        signed = cms.load(body)
    except CmsError as e:
        raise ScepError("scep-bad-response", f"the CertRep is not CMS SignedData: {e.message}") from None
    if len(signed.signers) != 1:
        raise ScepError("scep-bad-response", f"the CertRep has {len(signed.signers)} signers, not one")
    signer = signed.signers[0]
    if not signer.has_signed_attrs:
        raise ScepError("scep-bad-response", "the CertRep has no signed attributes")
    # PENDING and FAILURE replies carry no content: their digest is over nothing
    content = b"" if signed.content is None else signed.content
    signer_info = _signer_info(body)
    try:
        # only the certificates GetCACert gave may sign, never one the reply brings along
        signer_cert = cms.signer_certificate(replace(signed, certificates=[]), signer, ca.certificates)
        if signer.digest_algorithm == "sha1":
            if not sha1_ok:
                raise ScepError("scep-bad-response",
                                "the CertRep is signed with SHA-1, which the server does not list")
            _verify_sha1(signer_info, signer_cert, content)
        else:
            cms.verify_signer(signed, signer, signer_cert, content)
    except CmsError as e:
        raise ScepError("scep-bad-response", f"the CertRep signature does not check out: {e.message}") from None

    attrs = _attributes(signer_info)
    message_type = _string(attrs, ID_MESSAGE_TYPE, "messageType")
    if message_type != MSG_CERT_REP:
        raise ScepError("scep-bad-response",
                        f"the reply's messageType is {_printable(message_type, 20)!r}, not CertRep (3)")
    if _string(attrs, ID_TRANSACTION_ID, "transactionID") != tx.transaction_id:
        raise ScepError("scep-bad-response", "the CertRep's transactionID is not ours")
    if not hmac.compare_digest(_octets(attrs, ID_RECIPIENT_NONCE, "recipientNonce"), nonce):
        raise ScepError("scep-bad-response", "the CertRep's recipientNonce is not our senderNonce")
    pki_status = _string(attrs, ID_PKI_STATUS, "pkiStatus")
    status = PKI_STATUS.get(pki_status)
    if status is None:
        raise ScepError("scep-bad-response", f"unknown pkiStatus {_printable(pki_status, 20)!r}")

    if status == "PENDING":
        return Result("PENDING", None, None, tx.transaction_id), None
    if status == "FAILURE":
        code = _string(attrs, ID_FAIL_INFO, "failInfo", required=False)
        fail_info = FAIL_INFO.get(code)
        if fail_info is not None:
            why = fail_info
        else:
            why = f"unknown failInfo {_printable(code, 20)!r}" if code is not None else "no failInfo given"
        text = _fail_info_text(attrs)
        return Result("FAILURE", None, fail_info, tx.transaction_id), f"{why} ({text})" if text else why
    if signed.content is None:
        raise ScepError("scep-bad-response", "the SUCCESS CertRep carries no certificate")
    return Result("SUCCESS", _issued_cert(signed.content, key, tx), None, tx.transaction_id), None


def _undecodable(what: str, e: Exception) -> ScepError:
    return ScepError("scep-bad-response", f"the CertRep's {what} cannot be read: {_printable(str(e), 200)}")


def _signer_info(body: bytes) -> asn1_cms.SignerInfo:
    """The reply's one signerInfo, once cms.load has bounded and checked the same bytes."""
    try:
        return asn1_cms.ContentInfo.load(body)["content"]["signer_infos"][0]
    except _DECODE_ERRORS as e:
        raise _undecodable("signerInfo", e) from None


def _attributes(signer_info: asn1_cms.SignerInfo) -> dict[str, list]:
    try:
        return {a["type"].dotted: list(a["values"]) for a in signer_info["signed_attrs"]}
    except _DECODE_ERRORS as e:
        raise _undecodable("attributes", e) from None


def _typed(values: list, spec):
    """The one value of an attribute as spec; asn1crypto has already typed the attributes it knows."""
    if len(values) != 1:
        raise ValueError("an attribute must have one value")
    value = values[0].parse(spec) if isinstance(values[0], core.Any) else values[0]
    if not isinstance(value, spec):
        raise ValueError(f"not a {spec.__name__}")
    return value


def _verify_sha1(signer_info: asn1_cms.SignerInfo, cert: x509.Certificate, content: bytes) -> None:
    """An RSA SHA-1 CertRep signature, which `cms` refuses on principle.

    Accepted only from a server that lists SHA-1 (or when we had to sign with it): some
    servers, micromdm's among them, sign every CertRep with SHA-1 whatever the request used.
    What the CA signs holds a fresh nonce of its own and ours, so a forger cannot prepare a
    collision in advance; a SHA-1 second preimage is still out of reach.
    """
    try:
        algorithm = signer_info["signature_algorithm"]["algorithm"].native
        attrs = signer_info["signed_attrs"]
        signed = parser.emit(0, 1, 17, attrs.contents)  # the [0] tag becomes SET (RFC 5652 section 5.4)
        values = _attributes(signer_info)
        content_type = _typed(values[_ID_CONTENT_TYPE], core.ObjectIdentifier).dotted
        digest = _typed(values[_ID_MESSAGE_DIGEST], core.OctetString).native
        signature = signer_info["signature"].native
    except _DECODE_ERRORS:
        raise ScepError("scep-bad-response", "the CertRep's signed attributes are malformed") from None
    if algorithm not in ("rsassa_pkcs1v15", "sha1_rsa"):
        raise ScepError("scep-bad-response", f"the CertRep's signature algorithm {algorithm} is not RSA with SHA-1")
    if content_type != cms.ID_DATA:
        raise ScepError("scep-bad-response", "the CertRep's contentType attribute is not id-data")
    if not hmac.compare_digest(digest, hashlib.sha1(content).digest()):
        raise ScepError("scep-bad-response", "the CertRep's messageDigest does not match its content")
    public_key = cert.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise ScepError("scep-bad-response", "the CertRep's signer has no RSA key")
    try:
        public_key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA1())
    except InvalidSignature:
        raise ScepError("scep-bad-response", "the CertRep signature does not verify") from None


def _value(attrs: dict, oid: str, name: str, spec, required: bool):
    values = attrs.get(oid)
    if values is None:
        if required:
            raise ScepError("scep-bad-response", f"the CertRep has no {name}")
        return None
    try:
        return _typed(values, spec).native
    except _DECODE_ERRORS:
        raise ScepError("scep-bad-response", f"the CertRep's {name} is not a {spec.__name__}") from None


def _string(attrs: dict, oid: str, name: str, required: bool = True) -> str | None:
    return _value(attrs, oid, name, core.PrintableString, required)


def _octets(attrs: dict, oid: str, name: str) -> bytes:
    return _value(attrs, oid, name, core.OctetString, True)


def _fail_info_text(attrs: dict) -> str | None:
    try:
        text = _value(attrs, ID_FAIL_INFO_TEXT, "failInfoText", core.UTF8String, False)
    except ScepError:
        return None  # only there to explain; a bad one is no reason to hide the failInfo
    return _printable(text, 200) if text else None


def _issued_cert(envelope: bytes, key: rsa.RSAPrivateKey, tx: Transaction) -> x509.Certificate:
    """Our certificate from the envelope of a SUCCESS CertRep (RFC 8894 section 3.3.2)."""
    plain = _open_envelope(envelope, key, tx.signer_cert)
    try:
        certs = cms.load(plain).certificates
    except CmsError as e:
        raise ScepError("scep-bad-response", f"the CertRep does not hold a certificate list: {e.message}") from None
    ours = _spki(key.public_key())
    for cert in certs:
        try:
            if _spki(cert.public_key()) == ours:
                return _readable(cert, "the issued certificate")
        except (ValueError, UnsupportedAlgorithm):
            continue
    raise ScepError("scep-bad-response", "the CertRep holds no certificate for our key")


def _open_envelope(data: bytes, key: rsa.RSAPrivateKey, signer_cert: x509.Certificate) -> bytes:
    try:
        info = asn1_cms.ContentInfo.load(data, strict=True)
        if info["content_type"].native != "enveloped_data":
            raise ScepError("scep-bad-response", "the CertRep content is not EnvelopedData")
        enveloped = info["content"]
        ours = _asn1_cert(signer_cert)
        encrypted_key = None
        for recipient in enveloped["recipient_infos"]:
            if recipient.name != "ktri":
                continue
            rid = recipient.chosen["rid"]
            if (rid.name == "issuer_and_serial_number"
                    and rid.chosen["serial_number"].native == ours.serial_number
                    and rid.chosen["issuer"].dump() == ours.issuer.dump()):
                if recipient.chosen["key_encryption_algorithm"]["algorithm"].native != "rsaes_pkcs1v15":
                    raise ScepError("scep-bad-response", "the CertRep's key transport is not RSA PKCS#1 v1.5")
                encrypted_key = recipient.chosen["encrypted_key"].native
                break
        if encrypted_key is None:
            raise ScepError("scep-bad-response", "the CertRep is not encrypted to our certificate")
        algorithm, ciphertext = _encrypted_content(enveloped["encrypted_content_info"].dump())
        name = algorithm["algorithm"].native
        if name not in _REPLY_CIPHERS:
            raise ScepError("scep-bad-response", f"the CertRep's cipher {name} is not supported")
        key_size, block = _REPLY_CIPHERS[name]
        iv = algorithm["parameters"].native
    except _DECODE_ERRORS as e:
        raise _undecodable("EnvelopedData", e) from None
    if not isinstance(iv, bytes) or len(iv) != block or not ciphertext or len(ciphertext) % block:
        raise ScepError("scep-bad-response", "the CertRep's encrypted content is malformed")
    try:
        cek = key.decrypt(encrypted_key, padding.PKCS1v15())
    except ValueError:
        cek = b""
    # OpenSSL may hand back random bytes for a bad block rather than fail; both end here
    if len(cek) != key_size:
        raise ScepError("scep-bad-response", "the CertRep's content key cannot be decrypted")
    decryptor = _cipher(name, cek, iv).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = sym_padding.PKCS7(block * 8).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise ScepError("scep-bad-response", "the CertRep's content does not decrypt") from None


def _encrypted_content(raw: bytes) -> tuple[algos.EncryptionAlgorithm, bytes]:
    """The cipher and ciphertext of an EncryptedContentInfo.

    asn1crypto cannot read an [0] IMPLICIT OCTET STRING in the constructed (BER) form, which
    Go's and OpenSSL's CMS code write, so the fields are taken apart here.
    """
    _, _, _, _, contents, _ = parser.parse(raw)
    fields, pos = [], 0
    while pos < len(contents) and len(fields) < 3:
        end = _ber_end(contents, pos)
        fields.append((pos, end))
        pos = end
    if len(fields) != 3 or pos != len(contents):
        raise ValueError("EncryptedContentInfo without encryptedContent")
    algorithm = algos.EncryptionAlgorithm.load(contents[fields[1][0]:fields[1][1]])
    start, end = fields[2]
    if contents[start] & 0xDF != 0x80:  # [0], primitive or constructed
        raise ValueError("encryptedContent is not [0]")
    return algorithm, _ber_octets(contents, start, end, 0)


def _ber_length(buf: bytes, pos: int) -> tuple[int, int | None]:
    """(offset of the contents, their length or None for indefinite) of the encoding at pos."""
    if pos + 2 > len(buf) or buf[pos] & 0x1F == 0x1F:
        raise ValueError("truncated or high-tag encoding")
    first = buf[pos + 1]
    if first < 0x80:
        return pos + 2, first
    if first == 0x80:
        return pos + 2, None
    size = first & 0x7F
    if size > 4 or pos + 2 + size > len(buf):
        raise ValueError("bad length")
    return pos + 2 + size, int.from_bytes(buf[pos + 2:pos + 2 + size], "big")


def _ber_end(buf: bytes, pos: int, depth: int = 0) -> int:
    """The offset past the encoding at pos."""
    if depth > 16:
        raise ValueError("encoding nested too deeply")
    start, length = _ber_length(buf, pos)
    if length is not None:
        if start + length > len(buf):
            raise ValueError("truncated encoding")
        return start + length
    while buf[start:start + 2] != b"\0\0":
        if start >= len(buf):
            raise ValueError("unterminated indefinite length")
        start = _ber_end(buf, start, depth + 1)
    return start + 2


def _ber_octets(buf: bytes, pos: int, end: int, depth: int) -> bytes:
    """The value of the OCTET STRING encoded at buf[pos:end], joining BER segments."""
    if depth > 16:
        raise ValueError("encoding nested too deeply")
    start, length = _ber_length(buf, pos)
    if not buf[pos] & 0x20:
        return buf[start:end]
    # constructed: segments up to the end, or to the end-of-contents of an indefinite length
    stop = end if length is not None else end - 2
    parts = []
    while start < stop:
        if buf[start] & 0xDF != 0x04:
            raise ValueError("an OCTET STRING segment is not an OCTET STRING")
        seg_end = _ber_end(buf, start)
        if seg_end > stop:
            raise ValueError("an OCTET STRING segment overruns its string")
        parts.append(_ber_octets(buf, start, seg_end, depth + 1))
        start = seg_end
    return b"".join(parts)
