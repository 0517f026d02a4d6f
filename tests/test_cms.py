"""backends.engine.cms, cross-checked against the openssl CLI in both directions.

OpenSSL 3.0's `cms` command can neither make nor check Ed25519 SignedData
(openssl/openssl#11915, #32248), so Ed25519 is cross-checked piecewise: openssl
`pkeyutl -rawin` checks and remakes the signature over the signed attributes,
and `dgst` the message digest.
"""
from __future__ import annotations

import base64
import random
import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest
from asn1crypto import cms as asn1_cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key

from backends.engine import cms
from backends.engine.cms import CmsError

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")

CONTENT = b'{"ietf-voucher:voucher": {"serial-number": "JADA123456789", "assertion": "verified"}}'
VOUCHER = cms.ID_CT_ANIMA_JSON_VOUCHER
KEYGEN = {
    "rsa": ["-newkey", "rsa:2048"],
    "p256": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    "p384": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
    "ed25519": ["-newkey", "ed25519"],
}
LEAF_EXT = ("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")


def openssl(*args, input: bytes | None = None) -> bytes:
    done = subprocess.run(["openssl", *map(str, args)], input=input, capture_output=True)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


@dataclass
class Signer:
    key_path: Path
    cert_path: Path
    key: object
    cert: x509.Certificate


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Signer]:
    """A CA and, issued by it, one signer per key type; "ca" and "other" sign nothing."""
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", *KEYGEN["p256"], "-nodes", "-keyout", d / "ca.key", "-out", d / "ca.pem",
            "-subj", "/CN=Test CA", "-days", "2")
    (d / "leaf.ext").write_text(LEAF_EXT)
    out = {}
    for serial, name in enumerate([*KEYGEN, "other"], start=100):
        key, csr, cert = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.pem"
        openssl("req", "-new", *KEYGEN.get(name, KEYGEN["p256"]), "-nodes", "-keyout", key, "-out", csr,
                "-subj", f"/O=Trustplane Test/CN={name} signer")
        openssl("x509", "-req", "-in", csr, "-CA", d / "ca.pem", "-CAkey", d / "ca.key",
                "-set_serial", serial, "-days", "2", "-extfile", d / "leaf.ext", "-out", cert)
    for name in ["ca", *KEYGEN, "other"]:
        key, cert = d / f"{name}.key", d / f"{name}.pem"
        out[name] = Signer(key, cert, load_pem_private_key(key.read_bytes(), None),
                           x509.load_pem_x509_certificate(cert.read_bytes()))
    return out


@pytest.fixture
def msg(tmp_path) -> Path:
    path = tmp_path / "content"
    path.write_bytes(CONTENT)
    return path


def openssl_sign(signer: Signer, msg: Path, *args) -> bytes:
    return openssl("cms", "-sign", "-binary", "-in", msg, "-signer", signer.cert_path,
                   "-inkey", signer.key_path, "-outform", "DER", *args)


def openssl_verify(pki, tmp_path: Path, der: bytes, *args) -> bytes:
    path = tmp_path / "signed.der"
    path.write_bytes(der)
    return openssl("cms", "-verify", "-binary", "-purpose", "any", "-CAfile", pki["ca"].cert_path,
                   "-inform", "DER", "-in", path, *args)


def edit(der: bytes, change) -> bytes:
    """der with its SignedData changed by change(signed_data), re-encoded."""
    info = asn1_cms.ContentInfo.load(der)
    change(info["content"])
    return info.dump(force=True)


def code_of(call) -> str:
    with pytest.raises(CmsError) as caught:
        call()
    return caught.value.code


# ---- openssl signs, we verify ----------------------------------------------

OPENSSL_SIGNERS = {  # case: (key, openssl arguments, digest, signature algorithm)
    "rsa": ("rsa", [], "sha256", "rsassa_pkcs1v15"),
    "rsa-pss": ("rsa", ["-keyopt", "rsa_padding_mode:pss"], "sha256", "rsassa_pss"),
    "p256": ("p256", [], "sha256", "sha256_ecdsa"),
    "p384": ("p384", ["-md", "sha384"], "sha384", "sha384_ecdsa"),
}


@pytest.mark.parametrize("case", OPENSSL_SIGNERS)
@pytest.mark.parametrize("mode", ["attached", "detached", "noattr"])
def test_verify_openssl_signature(pki, msg, case, mode):
    key, args, digest, algorithm = OPENSSL_SIGNERS[case]
    args = args + {"attached": ["-nodetach"], "detached": [], "noattr": ["-nodetach", "-noattr"]}[mode]
    sd = cms.load(openssl_sign(pki[key], msg, *args))

    assert sd.content_type == cms.ID_DATA and sd.version == 1
    assert sd.content == (None if mode == "detached" else CONTENT)
    assert sd.certificates == [pki[key].cert]
    [signer] = sd.signers
    assert (signer.digest_algorithm, signer.signature_algorithm) == (digest, algorithm)
    assert signer.has_signed_attrs == (mode != "noattr")
    assert (signer.signing_time is not None) == (mode != "noattr")  # openssl adds signingTime
    assert signer.sid_issuer_serial == (pki[key].cert.issuer.public_bytes(), pki[key].cert.serial_number)
    assert cms.verify(sd, CONTENT if mode == "detached" else None) == [pki[key].cert]


def test_verify_openssl_streamed_ber(pki, msg):
    # -stream writes indefinite lengths and a constructed eContent
    sd = cms.load(openssl_sign(pki["p256"], msg, "-nodetach", "-stream"))
    assert sd.content == CONTENT
    assert cms.verify(sd) == [pki["p256"].cert]


def test_verify_openssl_streamed_large_content(pki, tmp_path):
    # a streamed eContent arrives as many OCTET STRING pieces
    big = tmp_path / "big"
    big.write_bytes(bytes(range(256)) * 16384)  # 4 MiB
    sd = cms.load(openssl_sign(pki["p256"], big, "-nodetach", "-stream"))
    assert sd.content == big.read_bytes()
    assert cms.verify(sd) == [pki["p256"].cert]


def test_verify_openssl_voucher_content_type(pki, msg):
    sd = cms.load(openssl_sign(pki["p256"], msg, "-nodetach", "-econtent_type", VOUCHER))
    assert (sd.version, sd.content_type, sd.content) == (3, VOUCHER, CONTENT)
    assert cms.verify(sd) == [pki["p256"].cert]


def test_verify_openssl_subject_key_identifier(pki, msg):
    sd = cms.load(openssl_sign(pki["rsa"], msg, "-nodetach", "-keyid"))
    [signer] = sd.signers
    ski = pki["rsa"].cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert (signer.sid_key_id, signer.sid_issuer_serial) == (ski, None)
    assert cms.verify(sd) == [pki["rsa"].cert]


def test_verify_openssl_two_signers(pki, msg):
    der = openssl("cms", "-sign", "-binary", "-nodetach", "-in", msg, "-outform", "DER",
                  "-signer", pki["rsa"].cert_path, "-inkey", pki["rsa"].key_path,
                  "-signer", pki["p384"].cert_path, "-inkey", pki["p384"].key_path)
    sd = cms.load(der)
    found = cms.verify(sd)
    assert found == [cms.signer_certificate(sd, s) for s in sd.signers]
    assert {c.serial_number for c in found} == {pki["rsa"].cert.serial_number, pki["p384"].cert.serial_number}


def test_signer_certificate_from_extra(pki, msg):
    sd = cms.load(openssl_sign(pki["p256"], msg, "-nodetach", "-nocerts"))
    assert sd.certificates == []
    assert code_of(lambda: cms.verify(sd)) == "cms-signer-not-found"
    assert code_of(lambda: cms.verify(sd, extra_certs=[pki["other"].cert])) == "cms-signer-not-found"
    assert cms.verify(sd, extra_certs=[pki["other"].cert, pki["p256"].cert]) == [pki["p256"].cert]


# ---- we sign, openssl verifies ---------------------------------------------

@pytest.mark.parametrize("key,digest", [("rsa", "sha256"), ("p256", "sha256"), ("p384", "sha384")])
@pytest.mark.parametrize("mode", ["attached", "detached", "noattr", "voucher"])
def test_openssl_verifies_our_signature(pki, tmp_path, msg, key, digest, mode):
    der = cms.sign(CONTENT, pki[key].key, pki[key].cert, chain=[pki["ca"].cert], digest=digest,
                   detached=mode == "detached", signed_attrs=mode != "noattr",
                   content_type=VOUCHER if mode == "voucher" else cms.ID_DATA)
    args = ["-content", msg] if mode == "detached" else []
    assert openssl_verify(pki, tmp_path, der, *args) == CONTENT

    sd = cms.load(der)
    assert sd.version == (3 if mode == "voucher" else 1)
    # a DER SET OF is sorted: the certificates come back in their encoding's order
    assert set(sd.certificates) == {pki[key].cert, pki["ca"].cert}
    assert cms.verify(sd, CONTENT) == [pki[key].cert]
    if mode == "voucher":
        printed = openssl("cms", "-cmsout", "-print", "-inform", "DER", "-in", tmp_path / "signed.der")
        assert f"eContentType: undefined ({VOUCHER})".encode() in printed


def test_openssl_reads_our_signing_time(pki, tmp_path):
    when = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    der = cms.sign(CONTENT, pki["p256"].key, pki["p256"].cert, signing_time=when)
    assert openssl_verify(pki, tmp_path, der) == CONTENT
    printed = openssl("cms", "-cmsout", "-print", "-inform", "DER", "-in", tmp_path / "signed.der")
    assert b"UTCTIME:May  6 07:08:09 2024 GMT" in printed
    assert cms.load(der).signers[0].signing_time == when


@pytest.mark.parametrize("when,expected", [
    (datetime(2030, 1, 2, 3, 4, 5), datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)),  # naive: UTC
    (datetime(2051, 1, 2, 3, 4, 5, 678, tzinfo=timezone.utc), datetime(2051, 1, 2, 3, 4, 5, tzinfo=timezone.utc)),
])
def test_signing_time_round_trip(pki, when, expected):
    der = cms.sign(CONTENT, pki["rsa"].key, pki["rsa"].cert, signing_time=when)
    assert cms.load(der).signers[0].signing_time == expected


# ---- Ed25519, piecewise -----------------------------------------------------

@pytest.mark.parametrize("mode", ["attached", "detached", "noattr", "voucher"])
def test_ed25519_cross_checked_with_pkeyutl(pki, tmp_path, mode):
    ed = pki["ed25519"]
    der = cms.sign(CONTENT, ed.key, ed.cert, detached=mode == "detached", signed_attrs=mode != "noattr",
                   content_type=VOUCHER if mode == "voucher" else cms.ID_DATA)
    assert cms.verify(cms.load(der), CONTENT) == [ed.cert]

    (tmp_path / "signed.der").write_bytes(der)
    printed = openssl("cms", "-cmsout", "-print", "-inform", "DER", "-in", tmp_path / "signed.der")
    assert b"algorithm: ED25519" in printed and b"algorithm: sha512" in printed

    signer_info = asn1_cms.ContentInfo.load(der)["content"]["signer_infos"][0]
    if mode == "noattr":
        covered = CONTENT
    else:
        attrs = signer_info["signed_attrs"].dump()
        assert attrs[0] == 0xA0
        covered = b"\x31" + attrs[1:]  # the [0] IMPLICIT tag becomes SET
        digest = {a["type"].native: a["values"][0].native for a in signer_info["signed_attrs"]}["message_digest"]
        assert digest == openssl("dgst", "-sha512", "-binary", input=CONTENT)
    (tmp_path / "covered").write_bytes(covered)
    (tmp_path / "sig").write_bytes(signer_info["signature"].native)
    openssl("pkeyutl", "-verify", "-rawin", "-certin", "-inkey", ed.cert_path,
            "-in", tmp_path / "covered", "-sigfile", tmp_path / "sig")
    # Ed25519 is deterministic: openssl's signature over the same bytes is ours
    ours = signer_info["signature"].native
    assert openssl("pkeyutl", "-sign", "-rawin", "-inkey", ed.key_path, "-in", tmp_path / "covered") == ours


# ---- certificates only -----------------------------------------------------

def test_load_crl2pkcs7(pki, tmp_path):
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(pki["rsa"].cert_path.read_bytes() + pki["ca"].cert_path.read_bytes())
    der = openssl("crl2pkcs7", "-nocrl", "-certfile", bundle, "-outform", "DER")
    pem = openssl("crl2pkcs7", "-nocrl", "-certfile", bundle)
    assert pem.startswith(b"-----BEGIN PKCS7-----")
    sd = cms.load(der)
    assert sd == cms.load(pem)
    assert sd.certificates == [pki["rsa"].cert, pki["ca"].cert]
    assert (sd.content_type, sd.content, sd.signers, sd.crls) == (cms.ID_DATA, None, [], [])
    assert code_of(lambda: cms.verify(sd)) == "cms-unsigned"


def test_certs_only_read_by_openssl(pki, tmp_path):
    der = cms.certs_only([pki["p384"].cert, pki["ca"].cert])
    (tmp_path / "certs.p7b").write_bytes(der)
    printed = openssl("pkcs7", "-print_certs", "-inform", "DER", "-in", tmp_path / "certs.p7b")
    assert printed.count(b"-----BEGIN CERTIFICATE-----") == 2
    assert pki["p384"].cert_path.read_bytes().strip() in printed
    sd = cms.load(der)
    assert set(sd.certificates) == {pki["p384"].cert, pki["ca"].cert} and sd.signers == []
    assert code_of(lambda: cms.verify(sd)) == "cms-unsigned"


def test_load_crls(pki, tmp_path):
    (tmp_path / "index.txt").write_text("")
    (tmp_path / "ca.cnf").write_text(f"[ca]\ndefault_ca=d\n[d]\ndatabase={tmp_path}/index.txt\n"
                                     "default_md=sha256\ndefault_crl_days=1\n")
    crl = openssl("ca", "-gencrl", "-config", tmp_path / "ca.cnf", "-keyfile", pki["ca"].key_path,
                  "-cert", pki["ca"].cert_path)
    (tmp_path / "crl.pem").write_bytes(crl)
    der = openssl("crl2pkcs7", "-in", tmp_path / "crl.pem", "-certfile", pki["ca"].cert_path, "-outform", "DER")
    sd = cms.load(der)
    crl_der = openssl("crl", "-in", tmp_path / "crl.pem", "-outform", "DER")
    assert sd.crls == [crl_der] and sd.certificates == [pki["ca"].cert]


# ---- text forms ------------------------------------------------------------

def test_pem_and_base64_load_like_der(pki, msg, tmp_path):
    der = openssl_sign(pki["rsa"], msg, "-nodetach")
    (tmp_path / "signed.der").write_bytes(der)
    pem = openssl("cms", "-cmsout", "-inform", "DER", "-in", tmp_path / "signed.der", "-outform", "PEM")
    assert pem.startswith(b"-----BEGIN CMS-----")
    expected = cms.load(der)
    assert cms.load(pem) == expected
    assert cms.load(b"\n  " + pem) == expected
    assert cms.load(base64.encodebytes(der)) == expected
    assert cms.load(base64.b64encode(der) + b"\n") == expected
    assert cms.verify(cms.load(pem)) == [pki["rsa"].cert]


# ---- failures --------------------------------------------------------------

@pytest.mark.parametrize("data", [
    b"",
    b"not a CMS at all",
    bytes(range(256)),
    b"\x30\x03\x02\x01",  # truncated
    b"-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n",
    b"-----BEGIN CMS-----\n!!!\n-----END CMS-----\n",
    base64.b64encode(b"\x30\x03\x02\x01\x01"),
], ids=["empty", "text", "binary", "truncated", "pem-label", "pem-body", "base64-not-cms"])
def test_garbage_is_malformed(data):
    assert code_of(lambda: cms.load(data)) == "cms-malformed"


def test_not_signed_data_is_malformed(pki, msg):
    data = asn1_cms.ContentInfo({"content_type": "data", "content": b"x"}).dump()
    assert code_of(lambda: cms.load(data)) == "cms-malformed"
    assert code_of(lambda: cms.load(pki["rsa"].cert_path.read_bytes())) == "cms-malformed"
    trailing = openssl_sign(pki["rsa"], msg, "-nodetach") + b"\0"
    assert code_of(lambda: cms.load(trailing)) == "cms-malformed"


def test_input_bounds(pki):
    assert code_of(lambda: cms.load(b"\x30" * (cms.MAX_INPUT + 1))) == "cms-malformed"

    cert = asn1_cms.CertificateChoices(name="certificate", value=asn1_x509.Certificate.load(
        pki["ca"].cert.public_bytes(Encoding.DER)))
    too_many = asn1_cms.ContentInfo({"content_type": "signed_data", "content": {
        "version": "v1", "digest_algorithms": [], "encap_content_info": {"content_type": "data"},
        "certificates": [cert] * (cms.MAX_CERTS + 1), "signer_infos": []}}).dump()
    assert code_of(lambda: cms.load(too_many)) == "cms-malformed"
    with pytest.raises(ValueError):
        cms.certs_only([pki["ca"].cert] * (cms.MAX_CERTS + 1))


def test_huge_set_is_refused_without_decoding_it(pki):
    # about 8 million empty signerInfos: counted, not decoded (which takes seconds and gigabytes)
    body = b"\x30\x00" * ((cms.MAX_INPUT - 64) // 2)
    infos = b"\x31\x84" + len(body).to_bytes(4, "big") + body
    head = bytes.fromhex("020101" "3100" "300b06092a864886f70d010701")
    sd = head + infos
    sd = b"\x30\x84" + len(sd).to_bytes(4, "big") + sd
    explicit = b"\xa0\x84" + len(sd).to_bytes(4, "big") + sd
    info = bytes.fromhex("06092a864886f70d010702") + explicit
    data = b"\x30\x84" + len(info).to_bytes(4, "big") + info
    assert len(data) <= cms.MAX_INPUT
    start = time.monotonic()
    assert code_of(lambda: cms.load(data)) == "cms-malformed"
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("key", ["rsa", "p256", "ed25519"])
def test_tampered_content(pki, msg, key):
    der = cms.sign(CONTENT, pki[key].key, pki[key].cert)
    sd = cms.load(der.replace(b"JADA123456789", b"JADA000000000"))
    assert code_of(lambda: cms.verify(sd)) == "cms-digest-mismatch"


def test_tampered_content_without_signed_attrs(pki, msg):
    der = openssl_sign(pki["rsa"], msg, "-nodetach", "-noattr")
    sd = cms.load(der.replace(b"JADA123456789", b"JADA000000000"))
    assert code_of(lambda: cms.verify(sd)) == "cms-signature-invalid"


@pytest.mark.parametrize("source", ["openssl-rsa", "openssl-rsa-pss", "openssl-p384", "ours-ed25519"])
@pytest.mark.parametrize("noattr", [False, True])
def test_tampered_signature(pki, msg, source, noattr):
    if source == "ours-ed25519":
        der = cms.sign(CONTENT, pki["ed25519"].key, pki["ed25519"].cert, signed_attrs=not noattr)
    else:
        key, args, _, _ = OPENSSL_SIGNERS[source.removeprefix("openssl-")]
        der = openssl_sign(pki[key], msg, "-nodetach", *args, *(["-noattr"] if noattr else []))
    assert cms.verify(cms.load(edit(der, lambda sd: None)))  # re-encoding alone changes nothing

    def flip(sd):
        signature = bytearray(sd["signer_infos"][0]["signature"].native)
        signature[len(signature) // 2] ^= 0x01
        sd["signer_infos"][0]["signature"] = bytes(signature)
    sd = cms.load(edit(der, flip))
    assert code_of(lambda: cms.verify(sd)) == "cms-signature-invalid"


def test_wrong_detached_content(pki, msg):
    sd = cms.load(openssl_sign(pki["p256"], msg))
    assert cms.verify(sd, CONTENT)
    assert code_of(lambda: cms.verify(sd, CONTENT + b" ")) == "cms-digest-mismatch"
    assert code_of(lambda: cms.verify(sd)) == "cms-malformed"  # no content at all
    attached = cms.load(openssl_sign(pki["p256"], msg, "-nodetach"))
    assert cms.verify(attached, CONTENT)  # the same content may be given again
    assert code_of(lambda: cms.verify(attached, b"other")) == "cms-digest-mismatch"


def test_voucher_without_signed_attrs(pki, tmp_path):
    def to_voucher(sd):
        sd["version"] = "v3"
        sd["encap_content_info"]["content_type"] = VOUCHER
    der = cms.sign(CONTENT, pki["p256"].key, pki["p256"].cert, signed_attrs=False)
    sd = cms.load(edit(der, to_voucher))
    assert (sd.content_type, sd.content, sd.signers[0].has_signed_attrs) == (VOUCHER, CONTENT, False)
    assert code_of(lambda: cms.verify(sd)) == "cms-no-signed-attrs"
    assert code_of(lambda: cms.sign(CONTENT, pki["p256"].key, pki["p256"].cert, content_type=VOUCHER,
                                    signed_attrs=False)) == "cms-no-signed-attrs"


def test_content_type_attribute_mismatch(pki):
    def to_data(sd):
        sd["encap_content_info"]["content_type"] = cms.ID_DATA
    der = cms.sign(CONTENT, pki["rsa"].key, pki["rsa"].cert, content_type=VOUCHER)
    sd = cms.load(edit(der, to_data))
    assert sd.content_type == cms.ID_DATA
    assert code_of(lambda: cms.verify(sd)) == "cms-content-type-mismatch"


def test_duplicate_signed_attribute(pki):
    def twice(sd):
        attrs = sd["signer_infos"][0]["signed_attrs"]
        attrs.append(asn1_cms.CMSAttribute({"type": "content_type", "values": [VOUCHER]}))
    der = cms.sign(CONTENT, pki["rsa"].key, pki["rsa"].cert)
    assert code_of(lambda: cms.load(edit(der, twice))) == "cms-malformed"


@pytest.mark.parametrize("digest", ["sha1", "md5"])
def test_weak_digest_refused(pki, msg, digest):
    sd = cms.load(openssl_sign(pki["rsa"], msg, "-nodetach", "-md", digest))
    assert sd.signers[0].digest_algorithm == digest
    assert code_of(lambda: cms.verify(sd)) == "cms-unsupported-algorithm"
    assert code_of(lambda: cms.sign(CONTENT, pki["rsa"].key, pki["rsa"].cert, digest=digest)) \
        == "cms-unsupported-algorithm"


def test_key_must_match_certificate(pki):
    with pytest.raises(ValueError):
        cms.sign(CONTENT, pki["rsa"].key, pki["p256"].cert)


@pytest.mark.parametrize("signer, algorithm", [("rsa", "sha256_ecdsa"), ("p256", "sha256_rsa"),
                                               ("p256", "ed25519"), ("ed25519", "sha512_ecdsa")])
def test_signature_algorithm_must_fit_the_key(pki, signer, algorithm):
    def rename(sd):
        sd["signer_infos"][0]["signature_algorithm"] = {"algorithm": algorithm}
    digest = "sha512" if signer == "ed25519" else "sha256"
    der = edit(cms.sign(CONTENT, pki[signer].key, pki[signer].cert, digest=digest), rename)
    with pytest.raises(CmsError) as caught:
        cms.verify(cms.load(der))
    assert (caught.value.code, caught.value.message) == (
        "cms-signature-invalid", "the certificate's key does not fit the signature algorithm")


def test_mutated_input_fails_only_with_cms_error(pki, msg):
    rnd = random.Random(5652)
    for der in (openssl_sign(pki["rsa"], msg, "-nodetach"), openssl_sign(pki["p256"], msg, "-nodetach", "-stream"),
                cms.sign(CONTENT, pki["ed25519"].key, pki["ed25519"].cert, content_type=VOUCHER)):
        for _ in range(300):
            data = bytearray(der)
            for _ in range(rnd.randint(1, 3)):
                pos = rnd.randrange(len(data))
                if rnd.random() < 0.7:
                    data[pos] = rnd.randrange(256)
                else:
                    del data[pos:pos + rnd.randint(1, 8)]
            try:
                cms.verify(cms.load(bytes(data)), CONTENT)
            except CmsError:
                pass


def test_every_truncation_is_malformed(pki, msg):
    for der in (openssl_sign(pki["p256"], msg, "-nodetach"), openssl_sign(pki["p256"], msg, "-nodetach", "-stream")):
        for cut in range(len(der)):
            assert code_of(lambda: cms.load(der[:cut])) == "cms-malformed", cut


@pytest.mark.parametrize("data", [
    b"\x30\x80" * 40 + b"\0\0" * 40,          # indefinite lengths nested past the limit
    b"\x04\x80\x04\x00\x00\x00",              # indefinite length on a primitive
    b"\x3f\x81\x01\x00",                      # high tag number
    b"\x30\x85\x01\x00\x00\x00\x00",          # length of five octets
    b"\x30\x06\x06\x09\x2a\x86\x48\x86",      # child longer than its parent
], ids=["deep", "primitive-indefinite", "high-tag", "long-length", "child-overruns"])
def test_bad_encodings_are_malformed(data):
    assert code_of(lambda: cms.load(data)) == "cms-malformed"


# ---- the DER reader and the walker agree -------------------------------------

def _readers_agree(der: bytes) -> bool:
    """The DER reader either declines or reads what the walker reads; True when it read."""
    fast = cms._read_der(der)
    try:
        walked = cms._walk(der)
    except CmsError:
        assert fast is None
        return False
    assert fast is None or fast == walked
    return fast is not None


def test_der_reader_reads_common_shapes_as_the_walker_does(pki, msg):
    read = {
        "lab voucher": cms.sign(CONTENT, pki["p256"].key, pki["p256"].cert, chain=[pki["ca"].cert],
                                content_type=VOUCHER, signing_time=datetime(2026, 5, 1, tzinfo=timezone.utc)),
        "openssl p256": openssl_sign(pki["p256"], msg, "-nodetach", "-certfile", pki["ca"].cert_path),
        "openssl rsa detached": openssl_sign(pki["rsa"], msg),
        "openssl key id": openssl_sign(pki["p384"], msg, "-nodetach", "-keyid", "-md", "sha384"),
        "ed25519": cms.sign(CONTENT, pki["ed25519"].key, pki["ed25519"].cert),
        "certificates only": cms.certs_only([pki["ca"].cert, pki["p256"].cert]),
    }
    for name, der in read.items():
        assert _readers_agree(der), name
    left = {  # the walker alone reads these
        "streamed": openssl_sign(pki["p256"], msg, "-nodetach", "-stream"),
        "rsa-pss": openssl_sign(pki["rsa"], msg, "-nodetach", "-keyopt", "rsa_padding_mode:pss"),
        "no signed attributes": openssl_sign(pki["p256"], msg, "-nodetach", "-noattr"),
    }
    for name, der in left.items():
        assert not _readers_agree(der), name


def test_der_reader_never_reads_what_the_walker_refuses(pki, msg):
    rnd = random.Random(8366)
    der = openssl_sign(pki["p256"], msg, "-nodetach", "-certfile", pki["ca"].cert_path)
    for cut in range(len(der)):
        _readers_agree(der[:cut])
    for _ in range(2000):
        data = bytearray(der)
        data[rnd.randrange(len(data))] = rnd.randrange(256)
        _readers_agree(bytes(data))


def test_signer_on_an_unsupported_curve(tmp_path, msg):
    key, cert = tmp_path / "k1.key", tmp_path / "k1.pem"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp256k1", "-nodes", "-keyout", key,
            "-out", cert, "-subj", "/CN=k1 signer", "-days", "2")
    der = openssl("cms", "-sign", "-binary", "-nodetach", "-in", msg, "-signer", cert, "-inkey", key, "-outform", "DER")
    assert code_of(lambda: cms.verify(cms.load(der))) == "cms-unsupported-algorithm"


def test_certificate_of_an_unknown_version_is_malformed(pki, msg):
    def bump(sd):
        sd["certificates"][0].chosen["tbs_certificate"]["version"] = 34
    der = edit(openssl_sign(pki["p256"], msg, "-nodetach"), bump)
    assert cms._read_der(der) is None
    assert code_of(lambda: cms.load(der)) == "cms-malformed"
