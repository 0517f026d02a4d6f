"""The SCEP client (RFC 8894): against Debian's scepserver (micromdm, an independent
implementation) and against a scripted responder for the replies a real CA rarely sends."""
from __future__ import annotations

import base64
import hashlib
import http.server
import os
import socket
import subprocess
import threading
import urllib.parse
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import pytest
from asn1crypto import cms as asn1_cms
from asn1crypto import core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, pkcs7
from cryptography.x509.oid import AttributeOID, NameOID

from backends.engine import cms
from backends.engine.x509 import scep
from backends.engine.x509.scep import CACerts, Result, ScepError
from openssl_ca import lazily_broken
from scep_server import ScepServer

CHALLENGE = "s3cret-Challenge"
PKI = "application/x-pki-message"
FIXED_NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
MODERN_CAPS = "POSTPKIOperation\nSHA-256\nAES\nSCEPStandard\n"


# ---- shared material -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ScepServer(tmp_path_factory.mktemp("scepserver"), CHALLENGE)
    srv.start()
    yield srv
    srv.stop()


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "trustplane"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def unique_name() -> x509.Name:
    # scepserver refuses a second certificate for a subject it has issued
    return name(f"router-{uuid.uuid4().hex[:12]}")


def make_csr(key, subject: x509.Name, challenge: str | None = CHALLENGE) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if challenge is not None:
        builder = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge.encode())
    return builder.sign(key, hashes.SHA256())


def spki(public_key) -> bytes:
    return public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def make_cert(subject: x509.Name, public_key, issuer_key, issuer: x509.Name | None = None, *,
              ca: bool, key_usage: x509.KeyUsage | None = None) -> x509.Certificate:
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer or subject)
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(FIXED_NOW - timedelta(days=1)).not_valid_after(FIXED_NOW + timedelta(days=365))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    return builder.sign(issuer_key, hashes.SHA256())


def ra_usage(encipher: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=encipher,
                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                         crl_sign=False, encipher_only=False, decipher_only=False)


def openssl(*args: str) -> str:
    return subprocess.run(["openssl", *args], check=True, capture_output=True, text=True).stdout


# ---- against Debian's scepserver -------------------------------------------------------------

def test_server_is_confined_to_loopback(server):
    """scepserver binds every interface of its namespace; only the loopback relay is in ours."""
    assert server._listener.getsockname()[0] == "127.0.0.1"
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()
    assert children, "scepserver is not running"
    theirs = os.readlink(f"/proc/{children[0]}/ns/net")
    assert Path(f"/proc/{children[0]}/exe").resolve() == Path("/usr/bin/scepserver").resolve()
    assert theirs != os.readlink("/proc/self/ns/net")


def test_get_ca_caps(server):
    caps = scep.get_ca_caps(server.url)
    assert caps == {"Renewal", "SHA-1", "SHA-256", "AES", "DES3", "SCEPStandard", "POSTPKIOperation"}


def test_get_ca_cert_is_the_depot_ca(server):
    ca = scep.get_ca_cert(server.url)
    expected = openssl("x509", "-in", str(server.ca_pem), "-noout", "-fingerprint", "-sha256")
    fingerprint = expected.strip().split("=", 1)[1].replace(":", "").lower()
    assert ca.ca.fingerprint(hashes.SHA256()).hex() == fingerprint
    assert ca.recipient == ca.ca
    assert ca.certificates == [ca.ca]


def enrol(server, key, subject, caps=None, challenge=CHALLENGE):
    ca = scep.get_ca_cert(server.url)
    caps = scep.get_ca_caps(server.url) if caps is None else caps
    return scep.pkcs_req(server.url, ca, key, make_csr(key, subject, challenge), caps=caps,
                         now=datetime.now(timezone.utc))


@pytest.mark.parametrize("caps", [None, set()], ids=["server-caps", "no-caps"])
def test_enrolment(server, key, tmp_path, caps):
    """With the caps the server lists (POST, AES, SHA-256) and with none (GET, 3DES, SHA-1)."""
    subject = unique_name()
    result, tx = enrol(server, key, subject, caps)
    assert result.status == "SUCCESS" and result.fail_info is None
    cert = result.certificate
    assert spki(cert.public_key()) == spki(key.public_key())
    assert cert.subject == subject
    assert result.transaction_id == tx.transaction_id == hashlib.sha256(spki(key.public_key())).hexdigest()
    issued = tmp_path / "issued.pem"
    issued.write_bytes(cert.public_bytes(Encoding.PEM))
    assert openssl("verify", "-CAfile", str(server.ca_pem), str(issued)).strip() == f"{issued}: OK"


def test_wrong_challenge_is_refused(server, key):
    with pytest.raises(ScepError) as e:
        enrol(server, key, unique_name(), challenge="not-the-challenge")
    assert e.value.code == "scep-failed"
    assert e.value.tag == "operation-failed"
    assert e.value.fail_info == "badRequest"
    assert e.value.message == "the SCEP server refused the request: badRequest"


def test_failure_as_result(server, key):
    ca = scep.get_ca_cert(server.url)
    result, tx = scep.pkcs_req(server.url, ca, key, make_csr(key, unique_name(), "wrong"),
                               caps=scep.get_ca_caps(server.url), now=datetime.now(timezone.utc),
                               raise_on_failure=False)
    assert result == Result("FAILURE", None, "badRequest", tx.transaction_id)


@pytest.mark.parametrize("make_key", [
    lambda: ec.generate_private_key(ec.SECP256R1()),
    lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024),
], ids=["ec-p256", "rsa-1024"])
def test_key_unsupported(server, make_key):
    other = make_key()
    ca = scep.get_ca_cert(server.url)
    with pytest.raises(ScepError) as e:
        scep.pkcs_req(server.url, ca, other, make_csr(other, unique_name()), caps={"SCEPStandard"},
                      now=datetime.now(timezone.utc))
    assert e.value.code == "scep-key-unsupported"
    assert e.value.tag == "invalid-value"


@pytest.mark.parametrize("where, message", [
    ("signature", "the CertRep signature does not verify"),
    ("content", "the CertRep's messageDigest does not match its content"),
    ("transaction-id", "the CertRep signature does not verify"),
])
def test_tampered_reply(server, key, monkeypatch, where, message):
    real_http = scep._http

    def flip(url, **kwargs):
        status, content_type, body = real_http(url, **kwargs)
        if "operation=PKIOperation" not in url:
            return status, content_type, body
        signed = asn1_cms.ContentInfo.load(body)["content"]
        if where == "signature":
            offset = len(body) - 1  # the signerInfo's signature is last
        elif where == "content":
            content = bytes(signed["encap_content_info"]["content"])
            offset = body.index(content) + len(content) // 2
        else:
            offset = body.index(hashlib.sha256(spki(key.public_key())).hexdigest().encode()) + 5
        tampered = bytearray(body)
        tampered[offset] ^= 0x01
        return status, content_type, bytes(tampered)

    monkeypatch.setattr(scep, "_http", flip)
    with pytest.raises(ScepError) as e:
        enrol(server, key, unique_name())
    assert (e.value.code, e.value.message) == ("scep-bad-response", message)


def test_unreachable(key):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/scep"
    for call in (scep.get_ca_caps, scep.get_ca_cert):
        with pytest.raises(ScepError) as e:
            call(url, timeout=2)
        assert e.value.code == "scep-unreachable"
        assert e.value.tag == "operation-failed"
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_cert = make_cert(name("CA"), ca_key.public_key(), ca_key, ca=True)
    with pytest.raises(ScepError) as e:
        scep.pkcs_req(url, CACerts(ca_cert, ca_cert, [ca_cert]), key, make_csr(key, name("r")),
                      caps={"SCEPStandard"}, now=FIXED_NOW, timeout=2)
    assert e.value.code == "scep-unreachable"


def test_silent_server_times_out():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)  # the handshake completes in the backlog; nothing ever answers
        with pytest.raises(ScepError) as e:
            scep.get_ca_caps(f"http://127.0.0.1:{s.getsockname()[1]}/scep", timeout=0.5)
    assert e.value.code == "scep-unreachable"
    assert e.value.message == "cannot reach the SCEP server: timed out"


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/scep", "http:///scep"])
def test_url_must_be_http(url):
    with pytest.raises(ScepError) as e:
        scep.get_ca_caps(url)
    assert (e.value.code, e.value.tag) == ("scep-unreachable", "invalid-value")


# ---- a scripted responder --------------------------------------------------------------------

VERISIGN = "2.16.840.1.113733.1.9."


class IssuerAndSubject(core.Sequence):
    _fields = [("issuer", asn1_x509.Name), ("subject", asn1_x509.Name)]


@dataclass
class Request:
    method: str
    message_type: str
    transaction_id: str
    sender_nonce: bytes
    digest: str
    cipher: str
    signer_cert: x509.Certificate
    content: bytes  # the decrypted messageData


class FakeScep:
    """GetCACaps, GetCACert and PKIOperation on loopback; each PKIOperation is answered by the
    next function in `plan`, which returns (content type, body), or None for a 404."""

    def __init__(self, caps: str = MODERN_CAPS, *, with_ra: bool = False):
        self.caps = caps
        self.ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ca_cert = make_cert(name("Fake SCEP CA"), self.ca_key.public_key(), self.ca_key, ca=True)
        self.key, self.cert = self.ca_key, self.ca_cert  # who decrypts requests and signs replies
        self.ca_certs = None
        if with_ra:
            self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.cert = make_cert(name("Fake SCEP RA"), self.key.public_key(), self.ca_key, self.ca_cert.subject,
                                  ca=False, key_usage=ra_usage(True))
            self.ca_certs = (scep.CA_RA_CERT, pkcs7.serialize_certificates([self.cert, self.ca_cert], Encoding.DER))
        self.plan: list[Callable[[Request], tuple[str, bytes] | None]] = []
        self.requests: list[Request] = []
        self.csr: x509.CertificateSigningRequest | None = None
        self.errors: list[BaseException] = []

    def __enter__(self) -> "FakeScep":
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self._serve(None)

            def do_POST(self):
                length = int(self.headers.get("Content-Length", "0"))
                self._serve(self.rfile.read(length))

            def _serve(self, body):
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                operation = query.get("operation", [""])[0]
                try:
                    if operation == "GetCACaps":
                        reply = ("text/plain", fake.caps.encode()) if fake.caps is not None else None
                    elif operation == "GetCACert":
                        reply = fake.ca_certs or (scep.CA_CERT, fake.ca_cert.public_bytes(Encoding.DER))
                    elif operation == "PKIOperation":
                        message = body if body is not None else base64.b64decode(query["message"][0])
                        request = fake.decode(self.command, message)
                        fake.requests.append(request)
                        reply = fake.plan.pop(0)(request)
                    else:
                        reply = None
                except BaseException as e:  # reported by the test, not lost in a thread
                    fake.errors.append(e)
                    reply = None
                if reply is None:
                    self.send_error(404)
                    return
                content_type, data = reply
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/cgi-bin/pkiclient.exe"
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)
        if self.errors and exc[0] is None:
            raise self.errors[0]

    def decode(self, method: str, message: bytes) -> Request:
        signed = asn1_cms.ContentInfo.load(message)["content"]
        signer = signed["signer_infos"][0]
        attrs = {a["type"].dotted: a["values"][0] for a in signer["signed_attrs"]}
        envelope = bytes(signed["encap_content_info"]["content"])
        eci = asn1_cms.ContentInfo.load(envelope)["content"]["encrypted_content_info"]
        # cryptography's (OpenSSL-derived) CMS code decrypts what the client enveloped
        content = pkcs7.pkcs7_decrypt_der(envelope, self.cert, self.key, [])
        request = Request(
            method=method,
            message_type=attrs[VERISIGN + "2"].parse(core.PrintableString).native,
            transaction_id=attrs[VERISIGN + "7"].parse(core.PrintableString).native,
            sender_nonce=attrs[VERISIGN + "5"].parse(core.OctetString).native,
            digest=signer["digest_algorithm"]["algorithm"].native,
            cipher=eci["content_encryption_algorithm"]["algorithm"].native,
            signer_cert=x509.load_der_x509_certificate(signed["certificates"][0].chosen.dump()),
            content=content,
        )
        if request.message_type == "19":
            self.csr = x509.load_der_x509_csr(content)
        return request

    def issue(self, public_key=None) -> x509.Certificate:
        return make_cert(self.csr.subject, public_key or self.csr.public_key(), self.ca_key, self.ca_cert.subject,
                         ca=False)

    def reply(self, request: Request, status: str, *, fail_info: str | None = None,
              certs: list[x509.Certificate] | None = None, signer=None, transaction_id: str | None = None,
              recipient_nonce: bytes | None = None, message_type: str = "3",
              fail_text: str | None = None) -> tuple[str, bytes]:
        """A CertRep built independently of the client: asn1crypto for the SignedData,
        cryptography's PKCS#7 builders for the envelope and the certificate list."""
        signer_key, signer_cert = signer or (self.key, self.cert)
        content = None
        if certs is not None:
            degenerate = pkcs7.serialize_certificates(certs, Encoding.DER)
            content = (pkcs7.PKCS7EnvelopeBuilder().set_data(degenerate).add_recipient(request.signer_cert)
                       .encrypt(Encoding.DER, [pkcs7.PKCS7Options.Binary]))
        string = core.PrintableString
        values = [
            ("content_type", "data"),
            ("message_digest", hashlib.sha256(content or b"").digest()),
            (VERISIGN + "2", string(message_type)),
            (VERISIGN + "3", string(status)),
            (VERISIGN + "7", string(transaction_id or request.transaction_id)),
            (VERISIGN + "5", core.OctetString(os.urandom(16))),
            (VERISIGN + "6", core.OctetString(recipient_nonce or request.sender_nonce)),
        ]
        if fail_info is not None:
            values.append((VERISIGN + "4", string(fail_info)))
        if fail_text is not None:
            values.append(("1.3.6.1.5.5.7.24.1", core.UTF8String(fail_text)))  # id-scep-failInfoText
        attrs = asn1_cms.CMSAttributes([{"type": t, "values": [v]} for t, v in values])
        signature = signer_key.sign(attrs.dump(), padding.PKCS1v15(), hashes.SHA256())
        a_signer = asn1_x509.Certificate.load(signer_cert.public_bytes(Encoding.DER))
        eci = {"content_type": "data"}
        if content is not None:
            eci["content"] = content
        signed = asn1_cms.SignedData({
            "version": "v1",
            "digest_algorithms": [{"algorithm": "sha256"}],
            "encap_content_info": eci,
            "certificates": [a_signer],
            "signer_infos": [{
                "version": "v1",
                "sid": asn1_cms.SignerIdentifier(name="issuer_and_serial_number", value={
                    "issuer": a_signer.issuer, "serial_number": a_signer.serial_number}),
                "digest_algorithm": {"algorithm": "sha256"},
                "signed_attrs": attrs,
                "signature_algorithm": {"algorithm": "rsassa_pkcs1v15"},
                "signature": signature,
            }],
        })
        return PKI, asn1_cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump()


@pytest.fixture
def fake():
    with FakeScep() as f:
        yield f


def test_pending_then_poll(fake, key):
    fake.plan = [lambda req: fake.reply(req, "3"),
                 lambda req: fake.reply(req, "0", certs=[fake.ca_cert, fake.issue()])]
    subject = name("pending-router")
    csr = make_csr(key, subject)
    caps = scep.get_ca_caps(fake.url)
    ca = scep.get_ca_cert(fake.url)
    result, tx = scep.pkcs_req(fake.url, ca, key, csr, caps=caps, now=FIXED_NOW)
    assert result == Result("PENDING", None, None, tx.transaction_id)
    assert tx.subject == subject
    assert tx.signer_cert.subject == tx.signer_cert.issuer == subject
    assert spki(tx.signer_cert.public_key()) == spki(key.public_key())
    assert tx.signer_cert.not_valid_before_utc <= FIXED_NOW < tx.signer_cert.not_valid_after_utc

    polled = scep.cert_poll(fake.url, ca, key, tx, caps=caps, now=FIXED_NOW + timedelta(minutes=5))
    assert polled.status == "SUCCESS"
    assert polled.transaction_id == tx.transaction_id
    assert spki(polled.certificate.public_key()) == spki(key.public_key())
    assert polled.certificate.subject == subject

    first, second = fake.requests
    assert (first.message_type, second.message_type) == ("19", "20")
    assert first.transaction_id == second.transaction_id == tx.transaction_id
    assert len(first.sender_nonce) == len(second.sender_nonce) == 16
    assert first.sender_nonce != second.sender_nonce
    assert (first.method, first.digest, first.cipher) == ("POST", "sha256", "aes128_cbc")
    assert first.content == csr.public_bytes(Encoding.DER)
    asked = IssuerAndSubject.load(second.content)
    assert asked["issuer"].dump() == fake.ca_cert.subject.public_bytes()
    assert asked["subject"].dump() == subject.public_bytes()


def test_get_transport_without_post(key):
    """A server listing neither POSTPKIOperation nor SCEPStandard gets the message in the URL."""
    with FakeScep("SHA-256\nAES\n") as fake:
        fake.plan = [lambda req: fake.reply(req, "0", certs=[fake.issue()])]
        ca = scep.get_ca_cert(fake.url)
        result, _ = scep.pkcs_req(fake.url, ca, key, make_csr(key, name("get")),
                                  caps=scep.get_ca_caps(fake.url), now=FIXED_NOW)
    assert result.status == "SUCCESS"
    assert (fake.requests[0].method, fake.requests[0].digest) == ("GET", "sha256")


def test_enrolment_through_an_ra(key):
    with FakeScep(with_ra=True) as fake:
        fake.plan = [lambda req: fake.reply(req, "0", certs=[fake.issue()])]
        ca = scep.get_ca_cert(fake.url)
        assert (ca.ca, ca.recipient) == (fake.ca_cert, fake.cert)
        assert len(ca.certificates) == 2 and set(ca.certificates) == {fake.cert, fake.ca_cert}
        result, _ = scep.pkcs_req(fake.url, ca, key, make_csr(key, name("via-ra")), caps=set(MODERN_CAPS.split()),
                                  now=FIXED_NOW)
    assert result.status == "SUCCESS"


def test_poll_failure(fake, key):
    fake.plan = [lambda req: fake.reply(req, "3"), lambda req: fake.reply(req, "2", fail_info="4")]
    ca = scep.get_ca_cert(fake.url)
    caps = scep.get_ca_caps(fake.url)
    _, tx = scep.pkcs_req(fake.url, ca, key, make_csr(key, name("poll-fails")), caps=caps, now=FIXED_NOW)
    with pytest.raises(ScepError) as e:
        scep.cert_poll(fake.url, ca, key, tx, caps=caps, now=FIXED_NOW)
    assert (e.value.code, e.value.fail_info) == ("scep-failed", "badCertId")
    assert e.value.message == "the SCEP server refused the request: badCertId"


def test_failure_with_text(fake, key):
    fake.plan = [lambda req: fake.reply(req, "2", fail_info="2", fail_text="challenge expired\n")]
    ca = scep.get_ca_cert(fake.url)
    with pytest.raises(ScepError) as e:
        scep.pkcs_req(fake.url, ca, key, make_csr(key, name("refused")), caps={"SCEPStandard"}, now=FIXED_NOW)
    assert (e.value.code, e.value.fail_info) == ("scep-failed", "badRequest")
    assert e.value.message == "the SCEP server refused the request: badRequest (challenge expired?)"


def stranger():
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return other_key, make_cert(name("Someone else"), other_key.public_key(), other_key, ca=True)


def flip_last_byte(reply: tuple[str, bytes]) -> tuple[str, bytes]:
    content_type, body = reply
    return content_type, body[:-1] + bytes([body[-1] ^ 1])  # the signature is last


@pytest.mark.parametrize("bad, message", [
    (lambda fake, req: fake.reply(req, "3", signer=stranger()),
     "the CertRep signature does not check out: no certificate matches the signer identifier"),
    (lambda fake, req: fake.reply(req, "3", transaction_id="0" * 64),
     "the CertRep's transactionID is not ours"),
    (lambda fake, req: fake.reply(req, "3", recipient_nonce=os.urandom(16)),
     "the CertRep's recipientNonce is not our senderNonce"),
    (lambda fake, req: fake.reply(req, "3", message_type="19"),
     "the reply's messageType is '19', not CertRep (3)"),
    (lambda fake, req: fake.reply(req, "1"),
     "unknown pkiStatus '1'"),
    (lambda fake, req: fake.reply(req, "0"),
     "the SUCCESS CertRep carries no certificate"),
    (lambda fake, req: fake.reply(req, "0", certs=[fake.issue(stranger()[0].public_key())]),
     "the CertRep holds no certificate for our key"),
    (lambda fake, req: fake.reply(req, "0", certs=[lazily_broken(fake.issue(), "extension")]),
     "the issued certificate has malformed names or extensions"),
    (lambda fake, req: flip_last_byte(fake.reply(req, "3")),
     "the CertRep signature does not check out: the signature does not verify"),
    (lambda fake, req: (PKI, b"garbage"),
     "the CertRep is not CMS SignedData: not DER"),
    (lambda fake, req: (PKI, b"\x30\x82\xff\xff garbage"),
     "the CertRep is not CMS SignedData: bad CMS structure"),
    (lambda fake, req: ("text/html", b"<html>hello</html>"),
     "PKIOperation returned content type text/html, not application/x-pki-message"),
    (lambda fake, req: (PKI, b"\0" * (scep.MAX_RESPONSE + 1)),
     "the SCEP reply is larger than 1048576 bytes"),
], ids=["wrong-signer", "transaction-id", "nonce", "message-type", "status", "no-content", "other-key",
        "unreadable-certificate", "bad-signature", "garbage", "truncated", "content-type", "too-large"])
def test_bad_reply(fake, key, bad, message):
    fake.plan = [lambda req: bad(fake, req)]
    ca = scep.get_ca_cert(fake.url)
    with pytest.raises(ScepError) as e:
        scep.pkcs_req(fake.url, ca, key, make_csr(key, name("bad")), caps=set(MODERN_CAPS.split()), now=FIXED_NOW)
    assert e.value.code == "scep-bad-response"
    assert e.value.message.startswith(message)


def test_unsigned_reply(fake, key):
    fake.plan = [lambda req: (PKI, pkcs7.serialize_certificates([fake.ca_cert], Encoding.DER))]
    ca = scep.get_ca_cert(fake.url)
    with pytest.raises(ScepError) as e:
        scep.pkcs_req(fake.url, ca, key, make_csr(key, name("bad")), caps={"SCEPStandard"}, now=FIXED_NOW)
    assert (e.value.code, e.value.message) == ("scep-bad-response", "the CertRep has 0 signers, not one")


def test_http_error_status(fake, key):
    fake.plan = [lambda req: None]  # answered with 404
    ca = scep.get_ca_cert(fake.url)
    with pytest.raises(ScepError) as e:
        scep.pkcs_req(fake.url, ca, key, make_csr(key, name("bad")), caps={"SCEPStandard"}, now=FIXED_NOW)
    assert (e.value.code, e.value.message) == ("scep-unreachable", "PKIOperation failed with HTTP status 404")


def test_caps_missing_or_empty():
    with FakeScep("") as fake:
        assert scep.get_ca_caps(fake.url) == set()
        fake.caps = None  # GetCACaps is answered with 404
        assert scep.get_ca_caps(fake.url) == set()
        fake.caps = "  AES \r\n\r\nSHA-256\nbad\x01word\n"
        assert scep.get_ca_caps(fake.url) == {"AES", "SHA-256"}


@pytest.mark.parametrize("certs_of, code, message", [
    (lambda fake: (scep.CA_CERT, b"not a certificate"), "scep-bad-response",
     "GetCACert did not return a DER certificate"),
    (lambda fake: ("text/plain", b"hello"), "scep-bad-response", "GetCACert returned content type text/plain"),
    (lambda fake: (scep.CA_RA_CERT, b"\x30\x03\x02\x01\x01"), "scep-bad-response", "GetCACert returned bad PKCS#7"),
    (lambda fake: (scep.CA_RA_CERT, pkcs7.serialize_certificates([fake.cert], Encoding.DER)), "scep-no-ca",
     "GetCACert returned no CA certificate"),
    (lambda fake: (scep.CA_CERT, fake.cert.public_bytes(Encoding.DER)), "scep-no-ca",
     "the certificate GetCACert returned is not a CA certificate"),
    (lambda fake: (scep.CA_CERT, lazily_broken(fake.ca_cert, "name").public_bytes(Encoding.DER)),
     "scep-bad-response", "the certificate GetCACert returned has malformed names or extensions"),
    (lambda fake: (scep.CA_RA_CERT, cms.certs_only([fake.cert, lazily_broken(fake.ca_cert, "extension")])),
     "scep-bad-response", "a certificate GetCACert returned has malformed names or extensions"),
], ids=["bad-der", "content-type", "bad-pkcs7", "ra-only", "leaf-only", "unreadable-ca", "unreadable-in-pkcs7"])
def test_bad_ca_certs(certs_of, code, message):
    with FakeScep(with_ra=True) as fake:
        fake.ca_certs = certs_of(fake)
        with pytest.raises(ScepError) as e:
            scep.get_ca_cert(fake.url)
    assert e.value.code == code
    assert e.value.message.startswith(message)


def test_ca_choice_in_a_chain():
    """Root and issuing CA with no RA: requests go to the issuing CA."""
    root_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    root = make_cert(name("Root"), root_key.public_key(), root_key, ca=True)
    with FakeScep() as fake:
        issuing = make_cert(name("Issuing"), fake.ca_key.public_key(), root_key, root.subject, ca=True)
        fake.ca_certs = (scep.CA_RA_CERT, pkcs7.serialize_certificates([root, issuing], Encoding.DER))
        ca = scep.get_ca_cert(fake.url)
    assert (ca.ca, ca.recipient) == (issuing, issuing)
