"""Voucher, owner certificate, key package and consent-token rules: one test per interop
quirk policy (README, "Voucher interop policy"), with the clock pinned."""
from __future__ import annotations

import base64
import json
import random
import subprocess
from datetime import datetime, timedelta, timezone

import pytest
from asn1crypto import cms as cms_asn1
from asn1crypto import crl as asn1_crl
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from backends.engine import cms
from backends.engine.onboarding import consent, keypackage, ownership, voucher
from backends.engine.onboarding.identity import MANUFACTURING_ROOT, MASA_ROOT, issue_idevid, key_usage, make_root_ca
from trustplane import lab_artifacts as lab
from openssl_ca import lazily_broken

NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)
SERIAL = "FOC2231X0AB"


@pytest.fixture(scope="module")
def pki():
    ca_key, ca = make_root_ca(NOW - timedelta(days=30), MASA_ROOT)
    masa_key, masa = lab.make_masa(ca_key, ca, NOW - timedelta(days=30))
    maker_key, maker = make_root_ca(NOW - timedelta(days=30), MANUFACTURING_ROOT)
    pdc_key, pdc = lab.make_owner_ca(NOW - timedelta(days=30))
    oc_key, oc, chain = lab.make_owner_cert(pdc_key, pdc, NOW - timedelta(days=30))
    idkey, idevid = issue_idevid(maker_key, maker, SERIAL, "8201-32FH", NOW - timedelta(days=30))
    return dict(ca_key=ca_key, ca=ca, masa_key=masa_key, masa=masa, pdc_key=pdc_key, pdc=pdc, oc_key=oc_key,
                oc=oc, idevid=idevid, idevid_key=idkey, maker=maker, maker_key=maker_key)


def signed(pki, members: dict, *, content_type=cms.ID_DATA, signer=None) -> bytes:
    body = {"serial-number": SERIAL, "created-on": "2026-05-01T10:00:00Z", "expires-on": "2027-05-01T10:00:00Z",
            "assertion": "logged",
            "pinned-domain-cert": base64.b64encode(pki["pdc"].public_bytes(serialization.Encoding.DER)).decode()}
    body.update(members)
    body = {k: v for k, v in body.items() if v is not None}
    content = json.dumps({voucher.VOUCHER_KEY: body}).encode()
    key, cert, ca = signer or (pki["masa_key"], pki["masa"], pki["ca"])
    return cms.sign(content, key, cert, chain=[ca], content_type=content_type)


def check(pki, data: bytes, **kw) -> voucher.Voucher:
    args = dict(anchors=[pki["ca"]], serial=SERIAL, at=NOW, idevid=pki["idevid"])
    args.update(kw)
    return voucher.verify(data, **args)


def refused(pki, data: bytes, code: str, **kw) -> None:
    with pytest.raises(voucher.VoucherError) as err:
        check(pki, data, **kw)
    assert err.value.code == code, err.value.message


def test_id_data_and_anima_content_types_are_accepted_and_recorded(pki):
    assert check(pki, signed(pki, {})).content_type == "id-data"
    assert check(pki, signed(pki, {}, content_type=cms.ID_CT_ANIMA_JSON_VOUCHER)).content_type == \
        "id-ct-animaJSONVoucher"
    refused(pki, signed(pki, {}, content_type="1.2.840.113549.1.9.16.1.42"), "ov-content-type")


def test_the_signer_must_chain_to_the_masa_anchor_not_to_the_cms(pki):
    other_key, other_ca = make_root_ca(NOW - timedelta(days=1), "Someone Else")
    rogue_key, rogue = lab.make_masa(other_key, other_ca, NOW - timedelta(days=1))
    refused(pki, signed(pki, {}, signer=(rogue_key, rogue, other_ca)), "ov-signer-untrusted")
    # the rogue CA travels in the CMS, but only the profile's anchors count
    good = signed(pki, {})
    assert check(pki, good).signer == pki["masa"]


def test_unknown_members_are_tolerated(pki):
    v = check(pki, signed(pki, {"XMLName": {"Space": "", "Local": ""}}))
    assert v.unknown_members == ["XMLName"]


def minimal_json(pki) -> str:
    body = {"serial-number": SERIAL, "created-on": "2026-05-01T10:00:00Z", "assertion": "logged",
            "pinned-domain-cert": base64.b64encode(pki["pdc"].public_bytes(serialization.Encoding.DER)).decode()}
    return json.dumps({voucher.VOUCHER_KEY: body})


@pytest.mark.parametrize("encoding, ok", [("utf-8", True), ("utf-8-sig", True), ("utf-16", False),
                                          ("utf-32-le", False)])
def test_json_text_is_utf8(pki, encoding, ok):
    data = cms.sign(minimal_json(pki).encode(encoding), pki["masa_key"], pki["masa"], chain=[pki["ca"]])
    if ok:
        assert check(pki, data).serial_number == SERIAL
    else:
        refused(pki, data, "ov-malformed")


@pytest.mark.parametrize("around, ok", [(" \t\r\n{}\n ", True), ("{} x", False), ("{}{}", False), ("", False),
                                        ("{} \f", False), ("\v{}", False)])
def test_json_text_whitespace(pki, around, ok):
    text = around.replace("{}", minimal_json(pki))
    if ok:
        assert voucher.parse(text.encode()).serial_number == SERIAL
    else:
        with pytest.raises(voucher.VoucherError) as err:
            voucher.parse(text.encode())
        assert err.value.code == "ov-malformed"


@pytest.mark.parametrize("text, ok", [
    ("2026-05-01T10:00:00.937649Z", True),
    ("2026-05-01T10:00:00+00:00", True),
    ("2026-05-01T06:00:00.123-04:00", True),
    ("20260501T100000Z", False),
    ("2026-05-01T11:00:00+00:60", False),
    ("2026-05-01", False),
])
def test_created_on_forms(pki, text, ok):
    data = signed(pki, {"created-on": text})
    if ok:
        assert check(pki, data).created_on <= NOW
    else:
        refused(pki, data, "ov-malformed")


@pytest.mark.parametrize("text, utc", [
    ("2026-05-01T10:00:00Z", datetime(2026, 5, 1, 10, 0, 0, tzinfo=timezone.utc)),
    ("2026-05-01t10:00:00z", datetime(2026, 5, 1, 10, 0, 0, tzinfo=timezone.utc)),
    ("2026-05-01T06:00:00.123-04:00", datetime(2026, 5, 1, 10, 0, 0, 123000, tzinfo=timezone.utc)),
    ("2026-05-01T10:00:00.123456789+00:00", datetime(2026, 5, 1, 10, 0, 0, 123456, tzinfo=timezone.utc)),
    ("2016-12-31T23:59:60Z", datetime(2016, 12, 31, 23, 59, 59, tzinfo=timezone.utc)),  # a leap second
])
def test_parse_datetime_values(text, utc):
    got = voucher.parse_datetime(text, "created-on")
    assert got == utc and got.utcoffset() == timedelta(0)


@pytest.mark.parametrize("text", ["2026-02-30T10:00:00Z", "2026-05-01T24:00:00Z", "2026-05-01T10:00:00+24:00",
                                  "2026-05-01T10:00:00+00:60", "2026-05-01T10:00:00-05:99",
                                  "2026-05-01 10:00:00Z", "2026-05-01T10:00:00", 20260501,
                                  "\uff12026-05-01T10:00:00Z", "2026-05-01T10:00:00.Z",
                                  "2026-05-01T10:00:00.1234567890Z", "2026-05-01T10:00:00+0000",
                                  "2026-05-01T10:00:00Z ", "2026-05-01T10:00:0\ud800Z"])
def test_parse_datetime_refuses(text):
    with pytest.raises(voucher.VoucherError) as err:
        voucher.parse_datetime(text, "created-on")
    assert err.value.code == "ov-malformed"


@pytest.mark.parametrize("text, ok", [("AAEC", True), ("AAECAw", True), ("AAECAw==", True), ("AAEC Aw==", True),
                                      ("AA-_", True), ("AAECAw===", False), ("AA=ECAw", False), ("AAE*", False)])
def test_parse_binary_forms(text, ok):
    if ok:
        assert voucher.parse_binary(text, "nonce") == base64.b64decode(text.replace("-", "+").replace("_", "/")
                                                                         .replace(" ", "") + "==")
    else:
        with pytest.raises(voucher.VoucherError):
            voucher.parse_binary(text, "nonce")


def test_revocation_checks_accepts_boolean_and_rfc_example_string(pki):
    assert check(pki, signed(pki, {"domain-cert-revocation-checks": "true"})).revocation_checks is True
    assert check(pki, signed(pki, {"domain-cert-revocation-checks": False})).revocation_checks is False
    refused(pki, signed(pki, {"domain-cert-revocation-checks": "yes"}), "ov-malformed")


@pytest.mark.parametrize("assertion", ["", "agent-proximity", "VERIFIED"])
def test_unacceptable_assertions(pki, assertion):
    refused(pki, signed(pki, {"assertion": assertion}), "ov-assertion-unacceptable")


def test_nonce_forms_and_issuance(pki):
    nonce = bytes(range(16))
    b64url = base64.urlsafe_b64encode(nonce).decode().rstrip("=")
    data = signed(pki, {"nonce": b64url, "expires-on": None})
    assert check(pki, data, nonces=[nonce]).nonce == nonce
    refused(pki, data, "ov-nonce-mismatch")  # the device never issued it
    # hex text that is valid base64 is read as base64 (RFC 7951): 24 other bytes, a nonce never issued
    refused(pki, signed(pki, {"nonce": nonce.hex(), "expires-on": None}), "ov-nonce-mismatch", nonces=[nonce])
    refused(pki, signed(pki, {"nonce": nonce.hex() + "0", "expires-on": None}), "ov-malformed", nonces=[nonce])
    refused(pki, signed(pki, {"nonce": base64.b64encode(b"short").decode(), "expires-on": None}), "ov-malformed")


@pytest.mark.parametrize("pdc", [["MIIB"], 7, "", "AAECAw==", base64.b64encode(b"not a certificate").decode()])
def test_pinned_domain_cert_must_be_a_base64_certificate(pki, pdc):
    refused(pki, signed(pki, {"pinned-domain-cert": pdc}), "ov-malformed")


def test_pem_line_breaks_in_the_pdc_are_tolerated(pki):
    der = base64.b64encode(pki["pdc"].public_bytes(serialization.Encoding.DER)).decode()
    wrapped = "\n".join(der[i:i + 64] for i in range(0, len(der), 64))
    assert check(pki, signed(pki, {"pinned-domain-cert": wrapped})).pinned_domain_cert == pki["pdc"]


def test_serial_must_match_exactly(pki):
    refused(pki, signed(pki, {"serial-number": SERIAL.lower()}), "ov-serial-mismatch")
    refused(pki, signed(pki, {"serial-number": "FOC2231X0AC"}), "ov-serial-mismatch")


def test_expiry_follows_the_injected_clock(pki):
    data = signed(pki, {"expires-on": "2026-05-20T00:00:00Z"})
    refused(pki, data, "ov-expired")
    assert check(pki, data, at=datetime(2026, 5, 10, tzinfo=timezone.utc)).serial_number == SERIAL
    refused(pki, signed(pki, {"created-on": "2026-07-01T00:00:00Z"}), "ov-not-yet-valid")


def test_idevid_issuer(pki):
    aki = pki["idevid"].extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    for form in (aki.public_bytes(), aki.key_identifier):
        assert check(pki, signed(pki, {"idevid-issuer": base64.b64encode(form).decode()}))
    refused(pki, signed(pki, {"idevid-issuer": base64.b64encode(b"\x01" * 20).decode()}),
            "ov-idevid-issuer-mismatch")


def test_tampered_and_unsigned_vouchers(pki):
    data = bytearray(signed(pki, {}))
    at = bytes(data).index(b"logged")
    data[at] ^= 0x20
    refused(pki, bytes(data), "ov-signature-invalid")
    refused(pki, cms.certs_only([pki["masa"]]), "ov-no-content")
    detached = cms.sign(b"{}", pki["masa_key"], pki["masa"], chain=[pki["ca"]], detached=True)
    with pytest.raises(voucher.VoucherError) as err:
        check(pki, detached)
    assert (err.value.code, err.value.message) == ("ov-no-content", voucher.NO_CONTENT)
    assert "detached signature or certificates only" in voucher.NO_CONTENT
    info = cms_asn1.ContentInfo.load(signed(pki, {}))
    info["content"]["signer_infos"] = []
    refused(pki, info.dump(force=True), "ov-unsigned")  # content, and no signer
    refused(pki, b"not a voucher", "ov-malformed")


def test_security_profile_member(pki):
    assert check(pki, signed(pki, {voucher.PROFILE_MEMBER: "strict"})).security_profile == "strict"
    assert check(pki, signed(pki, {})).security_profile == "default"
    refused(pki, signed(pki, {voucher.PROFILE_MEMBER: "paranoid"}), "ov-malformed")


# -- owner certificates -------------------------------------------------------------------

def test_owner_certificate_shapes(pki):
    degenerate = lab.owner_cert_cms(pki["oc"], [], pki["pdc"])
    signed_empty = cms.sign(b"", pki["oc_key"], pki["oc"], chain=[pki["pdc"]])
    for data in (degenerate, signed_empty):
        oc = ownership.verify_oc(data, pki["pdc"], at=NOW)
        assert oc.oc == pki["oc"] and oc.chain[-1] == pki["pdc"]


@pytest.mark.parametrize("how", ["name", "extension"])
def test_certificates_that_fail_when_read(pki, how):
    """A PDC or an owner certificate whose names or extensions fail when read is an error, never a crash."""
    bad_pdc = base64.b64encode(lazily_broken(pki["pdc"], how).public_bytes(serialization.Encoding.DER)).decode()
    refused(pki, signed(pki, {"pinned-domain-cert": bad_pdc}), "ov-malformed")
    # in a certs-only OC artifact an unreadable certificate is passed over
    extra = lazily_broken(pki["masa"], how)
    assert ownership.verify_oc(cms.certs_only([extra, pki["oc"], pki["pdc"]]), pki["pdc"], at=NOW).oc == pki["oc"]
    with pytest.raises(ownership.OwnershipError) as err:
        ownership.verify_oc(cms.certs_only([lazily_broken(pki["oc"], how)]), pki["pdc"], at=NOW)
    assert err.value.code == "oc-malformed"


def test_owner_certificate_through_an_intermediate_and_partial_match(pki):
    key, oc, chain = lab.make_owner_cert(pki["pdc_key"], pki["pdc"], NOW - timedelta(days=1), intermediate=True)
    data = lab.owner_cert_cms(oc, chain)
    assert len(ownership.verify_oc(data, pki["pdc"], at=NOW).chain) == 3
    # the intermediate as PDC: only with cert-chain-partial-match
    with pytest.raises(ownership.OwnershipError) as err:
        ownership.verify_oc(data, chain[0], at=NOW)
    assert err.value.code == "oc-partial-chain"
    assert ownership.verify_oc(data, chain[0], at=NOW, partial_match=True).chain[-1] == chain[0]
    # the OC itself as the PDC
    assert ownership.verify_oc(lab.owner_cert_cms(oc, []), oc, at=NOW, partial_match=True).chain == [oc]


def test_owner_certificate_failures(pki):
    other_key, other = lab.make_owner_ca(NOW - timedelta(days=1), "Other Owner")
    _k, stranger, _c = lab.make_owner_cert(other_key, other, NOW - timedelta(days=1))
    with pytest.raises(ownership.OwnershipError) as err:
        ownership.verify_oc(lab.owner_cert_cms(stranger, []), pki["pdc"], at=NOW)
    assert err.value.code == "oc-untrusted"
    with pytest.raises(ownership.OwnershipError) as err:
        ownership.verify_oc(lab.owner_cert_cms(pki["oc"], []), pki["pdc"], at=NOW + timedelta(days=3 * 365))
    assert err.value.code == "oc-expired"


def test_revocation_checks_and_crl_optional(pki):
    """domain-cert-revocation-checks true needs a current CRL from the PDC for the OC, unless
    crl-optional; a CRL listing the OC revokes it."""
    plain = lab.owner_cert_cms(pki["oc"], [], pki["pdc"])
    with pytest.raises(ownership.OwnershipError) as err:
        ownership.verify_oc(plain, pki["pdc"], at=NOW, revocation_checks=True)
    assert err.value.code == "oc-crl-missing"
    assert ownership.verify_oc(plain, pki["pdc"], at=NOW, revocation_checks=True, crl_optional=True).oc == pki["oc"]

    def crl(revoked: bool) -> x509.CertificateRevocationList:
        b = (x509.CertificateRevocationListBuilder().issuer_name(pki["pdc"].subject)
             .last_update(NOW - timedelta(days=1)).next_update(NOW + timedelta(days=7)))
        if revoked:
            b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(pki["oc"].serial_number)
                                          .revocation_date(NOW - timedelta(hours=1)).build())
        return b.sign(pki["pdc_key"], hashes.SHA256())

    def with_crl(c) -> bytes:
        # a certs-only CMS carrying the CRL, as `openssl crl2pkcs7 -certfile` makes it
        sd = cms_asn1.ContentInfo.load(plain)
        sd["content"]["crls"] = [cms_asn1.RevocationInfoChoice(
            name="crl", value=asn1_crl.CertificateList.load(c.public_bytes(serialization.Encoding.DER)))]
        return sd.dump(force=True)

    assert ownership.verify_oc(with_crl(crl(False)), pki["pdc"], at=NOW, revocation_checks=True).oc == pki["oc"]
    with pytest.raises(ownership.OwnershipError) as err:
        ownership.verify_oc(with_crl(crl(True)), pki["pdc"], at=NOW)
    assert err.value.code == "oc-revoked"
    # revocation checks false: the CRL is not consulted
    assert ownership.verify_oc(with_crl(crl(True)), pki["pdc"], at=NOW, revocation_checks=False).oc == pki["oc"]


def test_owner_certificate_key_usage_and_sha1_from_openssl(tmp_path):
    """OCs made by the openssl CLI: keyCertSign-only is refused (RFC 8572); SHA-1 only when relaxed."""
    def openssl_oc(name, ext, md):
        (tmp_path / f"{name}.ext").write_text(ext)
        subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-subj", f"/CN={name}", "-keyout", str(tmp_path / f"{name}.key"),
                        "-out", str(tmp_path / f"{name}.csr")], check=True, capture_output=True)
        subprocess.run(["openssl", "x509", "-req", "-in", str(tmp_path / f"{name}.csr"), "-CA", str(tmp_path / "pdc.pem"),
                        "-CAkey", str(tmp_path / "pdc.key"), "-days", "30", f"-{md}", "-extfile",
                        str(tmp_path / f"{name}.ext"), "-out", str(tmp_path / f"{name}.pem")],
                       check=True, capture_output=True)
        subprocess.run(["openssl", "crl2pkcs7", "-nocrl", "-certfile", str(tmp_path / f"{name}.pem"), "-outform", "DER",
                        "-out", str(tmp_path / f"{name}.cms")], check=True, capture_output=True)
        return (tmp_path / f"{name}.cms").read_bytes()

    at = datetime.now(timezone.utc) + timedelta(hours=1)  # after the certificates' notBefore
    pdc_now_key, pdc_now = lab.make_owner_ca(at - timedelta(days=1))
    (tmp_path / "pdc.pem").write_bytes(pdc_now.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "pdc.key").write_bytes(pdc_now_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    good = openssl_oc("good", "keyUsage=critical,digitalSignature\n", "sha256")
    assert ownership.verify_oc(good, pdc_now, at=at).oc.subject.rfc4514_string() == "CN=good"
    certsign = openssl_oc("certsign", "keyUsage=critical,keyCertSign\n", "sha256")
    with pytest.raises(ownership.OwnershipError) as err:
        ownership.verify_oc(certsign, pdc_now, at=at)
    assert err.value.code == "oc-key-usage"
    sha1 = openssl_oc("sha1", "keyUsage=critical,digitalSignature\n", "sha1")
    with pytest.raises(ownership.OwnershipError):
        ownership.verify_oc(sha1, pdc_now, at=at)
    assert ownership.verify_oc(sha1, pdc_now, at=at, allow_sha1=True).oc.subject.rfc4514_string() == "CN=sha1"


# -- bundles ---------------------------------------------------------------------------------

def test_bundle_selection_first_valid_wins_and_foreign_is_reported(pki):
    old = signed(pki, {"created-on": "2026-04-01T00:00:00Z"})
    new = signed(pki, {"created-on": "2026-05-01T00:00:00Z"})
    bad = signed(pki, {"expires-on": "2026-05-02T00:00:00Z"})
    foreign = signed(pki, {"serial-number": "FOC2231X0ZZ"})
    members = ownership.read_bundle(lab.bundle([("bad.vcj", bad), ("new.vcj", new), ("old.vcj", old),
                                                ("x.vcj", foreign)]))
    sel = ownership.select(members, {SERIAL}, anchors=[pki["ca"]], at=NOW, idevids={SERIAL: pki["idevid"]})
    assert sel.chosen[SERIAL][0] == "new.vcj"
    assert [(r[0], r[2]) for r in sel.rejected] == [("bad.vcj", "ov-expired"), ("old.vcj", "ov-duplicate")]
    assert sel.foreign == ["x.vcj"]


def test_bundle_refuses_corrupt_archives():
    for data in (b"\x1f\x8b\x08junk", b"plain text, not a tar"):
        with pytest.raises(ownership.OwnershipError) as err:
            list(ownership.read_bundle(data))
        assert err.value.code in ("ov-bundle-corrupt", "ov-bundle-empty")


# -- consent tokens and key packages ----------------------------------------------------------

def test_consent_token_rules():
    key = ed25519.Ed25519PrivateKey.generate()
    tokens = consent.ConsentTokens()
    a = tokens.issue(SERIAL, "0/RP0/CPU0", "clear-device-ownership", NOW)
    b = tokens.issue("FOC2231X0AC", "0/RP1/CPU0", "clear-device-ownership", NOW)
    resp_a = consent.sign(key, a.text())
    with pytest.raises(consent.ConsentError) as err:
        tokens.redeem("0/RP1/CPU0", "clear-device-ownership", resp_a, key.public_key(), NOW)
    assert err.value.code == "ct-wrong-node"
    assert tokens.redeem("0/RP0/CPU0", "clear-device-ownership", resp_a, key.public_key(), NOW) is a
    with pytest.raises(consent.ConsentError) as err:
        tokens.redeem("0/RP0/CPU0", "clear-device-ownership", resp_a, key.public_key(), NOW)
    assert err.value.code == "ct-response-replayed"
    with pytest.raises(consent.ConsentError) as err:
        tokens.redeem("0/RP1/CPU0", "clear-device-ownership", consent.sign(key, b.text()), key.public_key(),
                      NOW + timedelta(minutes=31))
    assert err.value.code == "ct-challenge-expired"
    other = ec.generate_private_key(ec.SECP256R1())
    c = tokens.issue(SERIAL, "0/RP0/CPU0", "clear-device-ownership", NOW)
    with pytest.raises(consent.ConsentError) as err:
        tokens.redeem("0/RP0/CPU0", "clear-device-ownership", consent.sign(other, c.text()), key.public_key(), NOW)
    assert err.value.code == "ct-response-invalid"
    assert SERIAL.encode() in base64.b64decode(c.text()) and b"clear-device-ownership" in base64.b64decode(c.text())


def test_key_packages(pki):
    ct = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    key = keypackage.Key("CUS-CT", "X509KEY", "consent-token", ct)
    data = lab.make_key_package(pki["oc_key"], pki["oc"], [key], NOW)
    pkg = keypackage.verify(data, pki["oc"], NOW)
    assert keypackage.apply({}, pkg)["CUS-CT"].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode() == ct
    other_key, other = lab.make_owner_ca(NOW - timedelta(days=1), "Not The Owner")
    with pytest.raises(keypackage.KeyPackageError) as err:
        keypackage.verify(lab.make_key_package(other_key, other, [key], NOW), pki["oc"], NOW)
    assert err.value.code == "kpkg-untrusted"
    with pytest.raises(keypackage.KeyPackageError) as err:
        keypackage.apply({}, keypackage.parse(keypackage.build([key], "Mon, 01 Jun 2026 00:00:00 +0000", "DELETE")))
    assert err.value.code == "kpkg-unknown-key"
    with pytest.raises(keypackage.KeyPackageError):
        keypackage.parse(keypackage.build([key], "yesterday"))
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(spki)
    assert key.fingerprint() == digest.finalize().hex()


def test_mutated_vouchers_fail_only_with_voucher_errors(pki):
    """Changed bytes anywhere, in the certificates too, give a VoucherError and never another exception."""
    rnd = random.Random(8366)
    der = signed(pki, {})
    for _ in range(4000):
        data = bytearray(der)
        for _ in range(rnd.randint(1, 3)):
            data[rnd.randrange(len(data))] = rnd.randrange(256)
        try:
            check(pki, bytes(data))
        except voucher.VoucherError:
            pass



# -- signer roles -----------------------------------------------------------------------------

def refused_with(pki, data: bytes, code: str, fragment: str, **kw) -> None:
    with pytest.raises(voucher.VoucherError) as err:
        check(pki, data, **kw)
    assert err.value.code == code and fragment in err.value.message, (err.value.code, err.value.message)


def test_a_device_identity_never_signs_a_voucher(pki):
    by_idevid = signed(pki, {}, signer=(pki["idevid_key"], pki["idevid"], pki["maker"]))
    refused_with(pki, by_idevid, "ov-signer-device-identity", "chains to a manufacturer (device identity) anchor",
                 device_anchors=[pki["maker"]])
    # the same anchor in both sets, as an administrator may decide: then it is a MASA anchor
    assert check(pki, by_idevid, anchors=[pki["ca"], pki["maker"]], device_anchors=[pki["maker"]]).signer == \
        pki["idevid"]


def test_a_voucher_signer_is_an_end_entity_with_digital_signature(pki):
    by_anchor = signed(pki, {}, signer=(pki["ca_key"], pki["ca"], pki["ca"]))
    refused_with(pki, by_anchor, "ov-signer-not-end-entity", "is a CA certificate")
    sub_key, sub_ca = lab.make_masa(pki["ca_key"], pki["ca"], NOW - timedelta(days=1),
                                    usage=key_usage(digital_signature=True, key_cert_sign=True), ca=True)
    refused_with(pki, signed(pki, {}, signer=(sub_key, sub_ca, pki["ca"])), "ov-signer-not-end-entity",
                 "basicConstraints cA is TRUE")
    enc_key, enc = lab.make_masa(pki["ca_key"], pki["ca"], NOW - timedelta(days=1),
                                 usage=key_usage(key_encipherment=True))
    refused_with(pki, signed(pki, {}, signer=(enc_key, enc, pki["ca"])), "ov-signer-key-usage",
                 "keyUsage without digitalSignature")


def test_a_masa_under_another_anchor_is_untrusted(pki):
    other_key, other = make_root_ca(NOW - timedelta(days=1), "Another Manufacturer MASA Root")
    masa_key, masa = lab.make_masa(other_key, other, NOW - timedelta(days=1))
    refused_with(pki, signed(pki, {}, signer=(masa_key, masa, other)), "ov-signer-untrusted", "no path",
                 device_anchors=[pki["maker"]])


def test_key_package_signer_and_consent_key_roles(pki):
    ct = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    key = keypackage.Key("CUS-CT", "X509KEY", "consent-token", ct)
    enc_key, enc = lab.make_masa(pki["pdc_key"], pki["pdc"], NOW - timedelta(days=1),
                                 usage=key_usage(key_encipherment=True))
    with pytest.raises(keypackage.KeyPackageError) as err:
        keypackage.verify(lab.make_key_package(enc_key, enc, [key], NOW), enc, NOW)
    assert (err.value.code, err.value.tag) == ("kpkg-signer-key-usage", "access-denied")
    # a consent-token key given as a CA certificate is no signing key
    ca_key = keypackage.Key("CUS-CT", "X509KEY", "consent-token",
                            pki["pdc"].public_bytes(serialization.Encoding.PEM).decode())
    with pytest.raises(keypackage.KeyPackageError) as err:
        keypackage.verify(lab.make_key_package(pki["oc_key"], pki["oc"], [ca_key], NOW), pki["oc"], NOW)
    assert err.value.code == "kpkg-key-role" and "is a CA certificate" in err.value.message


# -- typed errors for every input ---------------------------------------------------------------

@pytest.mark.parametrize("text", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00",
                                  "9999-12-31T23:30:00.5-00:31"])
def test_dates_past_the_datetime_range_in_utc_are_refused(text):
    with pytest.raises(voucher.VoucherError) as err:
        voucher.parse_datetime(text, "expires-on")
    assert (err.value.code, err.value.message) == (
        "ov-malformed", f"expires-on: {text!r} is outside the years 1 to 9999 in UTC")


def test_far_future_dates_are_accepted(pki):
    assert voucher.parse_datetime("9999-12-31T22:59:59-01:00", "expires-on") == \
        datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)
    assert voucher.parse_datetime("0001-01-01T00:59:59-00:30", "created-on") == \
        datetime(1, 1, 1, 1, 29, 59, tzinfo=timezone.utc)
    assert check(pki, signed(pki, {"expires-on": "9999-12-31T23:59:59Z"})).expires_on.year == 9999
    refused_with(pki, signed(pki, {"expires-on": "9999-12-31T23:59:59-01:00"}), "ov-malformed", "years 1 to 9999")


def unsigned_by_anyone(content: bytes) -> bytes:
    """A CMS whose signer no device trusts: what anyone can send."""
    key, ca = make_root_ca(NOW - timedelta(days=1), "Anyone")
    masa_key, masa = lab.make_masa(key, ca, NOW - timedelta(days=1))
    return cms.sign(content, masa_key, masa, chain=[ca])


@pytest.mark.parametrize("content, fragment", [
    (b"[" * 100_000 + b"]" * 100_000, "nested deeper than this reader allows"),
    (b'{"ietf-voucher:voucher": {"serial-number": ' + b"7" * 4000 + b"}}", "an integer of 4000 digits"),
    (b'{"ietf-voucher:voucher": {"x": 1e' + b"9" * 200 + b"}}", "a number of 202 characters"),
    (b'{"ietf-voucher:voucher": {"serial-number": "A", "serial-number": "B"}}',
     'member name "serial-number" appears twice'),
    (b'{"ietf-voucher:voucher": {"serial-number": "A", "x": {"y": 1, "y": 2}}}', 'member name "y" appears twice'),
    (b'{"ietf-voucher:voucher": {"serial-number": "A"}, "ietf-voucher:voucher": {}}', "appears twice"),
    (b'{"ietf-voucher:voucher": {"serial-number": "A", "x": NaN}}', "NaN is not a JSON value"),
    (b'{"ietf-voucher:voucher": {"serial-number": "A", "x": -Infinity}}', "-Infinity is not a JSON value"),
])
def test_hostile_json_is_refused_before_any_signature_check(pki, content, fragment):
    sel = ownership.select([("v.vcj", unsigned_by_anyone(content))], {SERIAL}, anchors=[pki["ca"]], at=NOW,
                           idevids={})
    assert [(r[0], r[2]) for r in sel.rejected] == [("v.vcj", "ov-malformed")]
    assert fragment in sel.rejected[0][3], sel.rejected[0][3]
    with pytest.raises(voucher.VoucherError) as err:
        voucher.parse(content)
    assert err.value.code == "ov-malformed" and fragment in err.value.message


def test_a_pem_or_base64_voucher_file_is_read_as_its_der(pki):
    der = signed(pki, {})
    pem = b"-----BEGIN CMS-----\n" + base64.encodebytes(der) + b"-----END CMS-----\n"
    for text in (pem, base64.encodebytes(der), base64.b64encode(der)):
        members = list(ownership.read_bundle(text, "v.pem"))
        assert members == [("v.pem", text)]
        sel = ownership.select(members, {SERIAL}, anchors=[pki["ca"]], at=NOW, idevids={})
        assert sel.chosen[SERIAL][0] == "v.pem" and not sel.rejected


def test_certificates_the_fuzzer_broke_are_refused_as_malformed(pki):
    pdc = bytearray(pki["pdc"].public_bytes(serialization.Encoding.DER))
    at = pdc.index(b"\xa0\x03\x02\x01\x02")  # version v3 becomes 11, which no reader knows
    pdc[at + 4] = 0x0A
    refused_with(pki, signed(pki, {"pinned-domain-cert": base64.b64encode(pdc).decode()}), "ov-malformed",
                 "pinned-domain-cert is not a DER X.509 certificate")
    # the signer's keyUsage becomes a second subjectKeyIdentifier: its extensions no longer read
    data = bytearray(signed(pki, {}))
    at = data.index(b"\x06\x03\x55\x1d\x0f")
    data[at + 4] = 0x0E
    refused_with(pki, bytes(data), "ov-malformed", "has a malformed name or malformed extensions")


def test_a_voucher_without_encapsulated_content_says_so(pki):
    sel = ownership.select([("certs.p7b", cms.certs_only([pki["masa"]]))], {SERIAL}, anchors=[pki["ca"]], at=NOW,
                           idevids={})
    assert sel.rejected == [("certs.p7b", "", "ov-no-content", voucher.NO_CONTENT)]


def test_bundle_members_are_read_one_at_a_time(pki):
    data = lab.bundle([(f"v{i}.vcj", signed(pki, {"serial-number": f"X{i}"})) for i in range(3)])
    members = ownership.read_bundle(data, "b.tar.gz")
    assert next(members)[0] == "v0.vcj"  # a generator: the rest is not read yet
    assert [name for name, _ in members] == ["v1.vcj", "v2.vcj"]


@pytest.mark.parametrize("content, fragment", [
    (b'{"key_packages": [], "key_packages": [{}], "timestamp": "Mon, 01 Jun 2026 00:00:00 +0000"}',
     'member name "key_packages" appears twice'),
    (b'{"key_packages": [], "timestamp": "Mon, 01 Jun 2026 00:00:00 +0000", "x": Infinity}', "Infinity"),
])
def test_key_package_json_is_read_as_strictly_as_a_voucher(content, fragment):
    with pytest.raises(keypackage.KeyPackageError) as err:
        keypackage.parse(content)
    assert err.value.code == "kpkg-malformed" and fragment in err.value.message
