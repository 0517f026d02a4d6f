"""Self-issued certificates and PKCS#10 requests (backends.engine.x509.certissue), checked with
the openssl CLI: `openssl verify` for the chain, `openssl x509 -text` for the content and
`openssl req -verify` for requests. Times are pinned to the seed's system-trustpoint
example (root 367 days, leaf 300 days from 13:07:26 UTC Sun Oct 20 2019)."""
from __future__ import annotations

import re
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from backends.engine.x509.certissue import (KEY_USAGE_NAMES, CertIssueError, csr_pem, device_subject,
                                       digest, issue, make_csr, matches_key, new_serial,
                                       parse_subject, self_signed_ca, subject_text)
from conftest import raises_code

NOW = datetime(2019, 10, 20, 13, 7, 26, tzinfo=timezone.utc)
AT = int((NOW + timedelta(days=1)).timestamp())     # for openssl verify -attime

CA_SUBJECT = "CN=lab1-ca,C=US,ST=CA,L=San Jose,O=cisco systems,OU=ASR"
LEAF_SUBJECT = "CN=lab1-ads,C=US,ST=CA,L=San Jose,O=cisco systems,OU=ASR"
SEED_CA = ("serialNumber=c44a11fc,unstructuredName=ios.cisco.com,OU=ASR,O=cisco systems,"
           "L=San Jose,ST=CA,C=US,CN=lab1-ca")
SEED_LEAF = ("serialNumber=7b20faa4,unstructuredAddress=10.1.1.1,unstructuredName=test-secl.cisco.com,"
             "CN=Anetwork,OU=IT,O=Spark Network,L=Rotterdam,ST=Zuid Holland,C=NL")

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")

KEY_TYPES = ("rsa", "nistp256", "nistp384", "nistp521", "ed25519")


def make_key(kind: str):
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key({"nistp256": ec.SECP256R1(), "nistp384": ec.SECP384R1(),
                                   "nistp521": ec.SECP521R1()}[kind])


@pytest.fixture(scope="module")
def keys() -> dict:
    # two keys per type: the root's and the leaf's
    return {kind: (make_key(kind), make_key(kind)) for kind in KEY_TYPES}


def pem(obj) -> bytes:
    return obj.public_bytes(serialization.Encoding.PEM)


def openssl(*args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(("openssl", *args), cwd=cwd, capture_output=True, text=True)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def x509_text(cert: x509.Certificate, tmp_path: Path, name: str = "c.pem") -> str:
    (tmp_path / name).write_bytes(pem(cert))
    return openssl("x509", "-in", name, "-noout", "-text", cwd=tmp_path).stdout


def expect(code: str, tag: str | None = None):
    return raises_code(CertIssueError, code, tag)


def system_trustpoint(ca_key, leaf_key, *, digest_name="sha256", leaf_usage=None):
    """The seed's `enrollment url self` example: root from ca-keypair, leaf from keypair."""
    root = self_signed_ca(
        ca_key, device_subject(parse_subject(CA_SUBJECT), "ios.cisco.com", "c44a11fc", None),
        lifetime_days=367, key_usage={"digitalsignature", "keycertsign", "crlsign"},
        digest_name=digest_name, serial=0x0B62, now=NOW)
    leaf = issue(
        ca_key, root, leaf_key.public_key(),
        device_subject(parse_subject(LEAF_SUBJECT), "ios.cisco.com", "c44a11fc", None),
        lifetime_days=300, key_usage=leaf_usage, digest_name=digest_name, serial=0x0B63,
        now=NOW + timedelta(seconds=21))
    return root, leaf


# ---- chains checked by openssl ----------------------------------------------------

@pytest.mark.parametrize("kind", KEY_TYPES)
def test_root_and_leaf_verify_with_openssl(keys, tmp_path: Path, kind: str):
    ca_key, leaf_key = keys[kind]
    root, leaf = system_trustpoint(ca_key, leaf_key)
    (tmp_path / "root.pem").write_bytes(pem(root))
    (tmp_path / "leaf.pem").write_bytes(pem(leaf))
    out = openssl("verify", "-x509_strict", "-attime", str(AT), "-CAfile", "root.pem", "leaf.pem",
                  cwd=tmp_path)
    assert out.stdout.strip() == "leaf.pem: OK"
    # the root verifies itself
    openssl("verify", "-x509_strict", "-attime", str(AT), "-CAfile", "root.pem", "root.pem",
            cwd=tmp_path)
    # and the chain is refused after the root expired
    late = int((NOW + timedelta(days=400)).timestamp())
    bad = openssl("verify", "-attime", str(late), "-CAfile", "root.pem", "leaf.pem",
                  cwd=tmp_path, ok=False)
    assert bad.returncode != 0

    root_text = x509_text(root, tmp_path, "root.pem")
    assert re.search(r"Basic Constraints: critical\n\s+CA:TRUE", root_text)
    assert re.search(r"Key Usage: critical\n\s+Digital Signature, Certificate Sign, CRL Sign",
                     root_text)
    assert "Not Before: Oct 20 13:07:26 2019 GMT" in root_text
    assert "Not After : Oct 21 13:07:26 2020 GMT" in root_text       # the seed's 367 days
    assert "Subject Key Identifier" in root_text and "Authority Key Identifier" in root_text
    assert ("Subject: CN = lab1-ca, C = US, ST = CA, L = San Jose, O = cisco systems, OU = ASR, "
            "unstructuredName = ios.cisco.com, serialNumber = c44a11fc") in root_text

    leaf_text = x509_text(leaf, tmp_path, "leaf.pem")
    assert re.search(r"Basic Constraints: critical\n\s+CA:FALSE", leaf_text)
    expected_usage = "Digital Signature, Key Encipherment" if kind == "rsa" else "Digital Signature\n"
    assert re.search(r"Key Usage: critical\n\s+" + re.escape(expected_usage), leaf_text)
    assert "Not Before: Oct 20 13:07:47 2019 GMT" in leaf_text
    assert "Not After : Aug 15 13:07:47 2020 GMT" in leaf_text       # the seed's 300 days
    assert "Issuer: CN = lab1-ca, C = US" in leaf_text
    sig = {"rsa": "sha256WithRSAEncryption", "ed25519": "ED25519"}.get(kind, "ecdsa-with-SHA256")
    assert f"Signature Algorithm: {sig}" in leaf_text

    assert matches_key(root, ca_key.public_key()) and matches_key(leaf, leaf_key)
    assert not matches_key(leaf, ca_key.public_key())


def test_subjects_read_like_the_seed(keys, tmp_path: Path):
    ca_key, leaf_key = keys["rsa"]
    root, leaf = system_trustpoint(ca_key, leaf_key)
    assert subject_text(root.subject) == SEED_CA
    assert subject_text(root.issuer) == SEED_CA
    # openssl's RFC 2253 view (last RDN first) agrees
    (tmp_path / "root.pem").write_bytes(pem(root))
    out = openssl("x509", "-in", "root.pem", "-noout", "-subject", "-nameopt", "RFC2253",
                  cwd=tmp_path).stdout.strip()
    assert out == "subject=" + SEED_CA

    second = device_subject(parse_subject("C=NL,ST=Zuid Holland,L=Rotterdam,O=Spark Network,"
                                          "OU=IT,CN=Anetwork"),
                            "test-secl.cisco.com", "7b20faa4", "10.1.1.1")
    assert subject_text(second) == SEED_LEAF
    assert subject_text(device_subject(None, "test-secl.cisco.com", "7b20faa4", None)) == \
        "serialNumber=7b20faa4,unstructuredName=test-secl.cisco.com"
    assert len(device_subject(None, None, None, None)) == 0


def test_mixed_key_types_and_digests(keys, tmp_path: Path):
    ca_key = keys["rsa"][0]
    for leaf_kind, digest_name, sig in (("nistp384", "sha384", "sha384WithRSAEncryption"),
                                        ("ed25519", "sha512", "sha512WithRSAEncryption")):
        root, leaf = system_trustpoint(ca_key, keys[leaf_kind][1], digest_name=digest_name)
        (tmp_path / "root.pem").write_bytes(pem(root))
        (tmp_path / "leaf.pem").write_bytes(pem(leaf))
        openssl("verify", "-x509_strict", "-attime", str(AT), "-CAfile", "root.pem", "leaf.pem",
                cwd=tmp_path)
        assert f"Signature Algorithm: {sig}" in x509_text(leaf, tmp_path)
    root, leaf = system_trustpoint(keys["nistp521"][0], keys["rsa"][1], digest_name="sha512")
    assert "ecdsa-with-SHA512" in x509_text(leaf, tmp_path)


def test_seed_key_usage_configuration(keys, tmp_path: Path):
    # key-usage certificate digitalsignature keyagreement dataencipherment
    root, leaf = system_trustpoint(*keys["rsa"], leaf_usage={"digitalsignature", "keyagreement",
                                                             "dataencipherment"})
    assert re.search(r"Key Usage: critical\n\s+Digital Signature, Data Encipherment, Key Agreement",
                     x509_text(leaf, tmp_path))
    root, leaf = system_trustpoint(*keys["nistp256"], leaf_usage={"DigitalSignature",
                                                                  "nonRepudiation", "keyAgreement"})
    assert re.search(r"Key Usage: critical\n\s+Digital Signature, Non Repudiation, Key Agreement",
                     x509_text(leaf, tmp_path))


def test_leaf_never_outlives_the_root(keys):
    ca_key, leaf_key = keys["nistp256"]
    root, _ = system_trustpoint(ca_key, leaf_key)
    leaf = issue(ca_key, root, leaf_key.public_key(), parse_subject("CN=long"),
                 lifetime_days=5000, key_usage=None, digest_name=None, serial=new_serial(),
                 now=NOW + timedelta(days=10))
    assert leaf.not_valid_after_utc == root.not_valid_after_utc
    with expect("issuer-expired"):
        issue(ca_key, root, leaf_key.public_key(), parse_subject("CN=late"), lifetime_days=30,
              key_usage=None, digest_name=None, serial=new_serial(), now=NOW + timedelta(days=368))


def test_leaf_with_dns_san(keys, tmp_path: Path):
    ca_key, leaf_key = keys["ed25519"]
    root, _ = system_trustpoint(ca_key, leaf_key)
    leaf = issue(ca_key, root, leaf_key, parse_subject("CN=router"), lifetime_days=30,
                 key_usage=None, digest_name=None, serial=new_serial(), now=NOW,
                 san_dns="router.example.net")
    assert "DNS:router.example.net" in x509_text(leaf, tmp_path)
    with expect("subject-invalid"):
        issue(ca_key, root, leaf_key, parse_subject("CN=router"), lifetime_days=30,
              key_usage=None, digest_name=None, serial=new_serial(), now=NOW,
              san_dns="not a name")


# ---- refusals when issuing ------------------------------------------------------

@pytest.mark.parametrize("name", ["sha1", "md5", "SHA1", "sha-1"])
def test_weak_digests_refused(keys, name):
    ca_key, leaf_key = keys["rsa"]
    subject = parse_subject(CA_SUBJECT)
    with expect("weak-digest", "invalid-value"):
        self_signed_ca(ca_key, subject, lifetime_days=10, key_usage=None, digest_name=name,
                       serial=1, now=NOW)
    root, _ = system_trustpoint(ca_key, leaf_key)
    with expect("weak-digest", "invalid-value"):
        issue(ca_key, root, leaf_key.public_key(), subject, lifetime_days=10, key_usage=None,
              digest_name=name, serial=2, now=NOW)
    with expect("weak-digest", "invalid-value"):
        make_csr(leaf_key, subject, challenge_password=None, digest_name=name)
    with expect("weak-digest"):
        digest(name, keys["ed25519"][0])


def test_digest_choice(keys):
    assert isinstance(digest(None, keys["rsa"][0]), hashes.SHA256)
    assert isinstance(digest("SHA384", keys["nistp384"][0].public_key()), hashes.SHA384)
    assert isinstance(digest("sha512", keys["nistp256"][0]), hashes.SHA512)
    assert digest(None, keys["ed25519"][0]) is None
    assert digest("sha384", keys["ed25519"][0]) is None
    with expect("digest-unsupported", "invalid-value"):
        digest("sha3-256", keys["rsa"][0])
    with expect("weak-key", "invalid-value"):
        digest(None, rsa.generate_private_key(public_exponent=65537, key_size=1024))
    with expect("key-unsupported"):
        digest(None, ec.generate_private_key(ec.SECP256K1()))
    with expect("key-unsupported"):
        digest(None, dsa.generate_private_key(2048))


def test_key_mismatch_and_issuer_checks(keys):
    ca_key, leaf_key = keys["nistp256"]
    root, leaf = system_trustpoint(ca_key, leaf_key)
    with expect("key-mismatch"):
        issue(leaf_key, root, leaf_key.public_key(), parse_subject("CN=x"), lifetime_days=10,
              key_usage=None, digest_name=None, serial=3, now=NOW)
    with expect("issuer-not-ca"):
        issue(leaf_key, leaf, ca_key.public_key(), parse_subject("CN=x"), lifetime_days=10,
              key_usage=None, digest_name=None, serial=3, now=NOW)
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with expect("weak-key"):
        issue(ca_key, root, weak.public_key(), parse_subject("CN=x"), lifetime_days=10,
              key_usage=None, digest_name=None, serial=3, now=NOW)


def test_key_usage_rules(keys):
    ca_key, leaf_key = keys["nistp256"]
    subject = parse_subject(CA_SUBJECT)
    with expect("key-usage-invalid", "invalid-value"):
        self_signed_ca(ca_key, subject, lifetime_days=10, key_usage={"digitalsignature"},
                       digest_name=None, serial=1, now=NOW)
    with expect("key-usage-invalid"):
        self_signed_ca(ca_key, subject, lifetime_days=10, key_usage={"keycertsign", "sign"},
                       digest_name=None, serial=1, now=NOW)
    root, _ = system_trustpoint(ca_key, leaf_key)
    for usage, key in (({"keyencipherment"}, leaf_key), ({"dataencipherment"}, leaf_key),
                       ({"keyagreement"}, keys["ed25519"][1]),
                       ({"digitalsignature", "keycertsign"}, keys["rsa"][1])):
        with expect("key-usage-invalid"):
            issue(ca_key, root, key.public_key(), subject, lifetime_days=10, key_usage=usage,
                  digest_name=None, serial=2, now=NOW)
    assert set(KEY_USAGE_NAMES) == {"digitalsignature", "keycertsign", "crlsign", "nonrepudiation",
                                    "keyagreement", "dataencipherment", "keyencipherment"}


@pytest.mark.parametrize("serial", [0, -5, 1 << 160, True])
def test_bad_serials(keys, serial):
    with expect("serial-invalid"):
        self_signed_ca(keys["ed25519"][0], parse_subject("CN=x"), lifetime_days=10, key_usage=None,
                       digest_name=None, serial=serial, now=NOW)


@pytest.mark.parametrize("days", [0, -1, 8193, 1.5])
def test_bad_lifetimes(keys, days):
    with expect("lifetime-invalid"):
        self_signed_ca(keys["ed25519"][0], parse_subject("CN=x"), lifetime_days=days,
                       key_usage=None, digest_name=None, serial=1, now=NOW)


def test_new_serial():
    serials = {new_serial() for _ in range(200)}
    assert len(serials) == 200
    for s in serials:
        assert s > 0 and 64 < s.bit_length() <= 159      # RFC 5280: at most 20 octets


# ---- requests ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", KEY_TYPES)
def test_csr_verified_by_openssl(keys, tmp_path: Path, kind: str):
    key = keys[kind][1]
    subject = device_subject(parse_subject(LEAF_SUBJECT), "ios.cisco.com", "c44a11fc", "10.1.1.1")
    csr = make_csr(key, subject, challenge_password="Not-The-Default 42", digest_name="sha384",
                   ip_address="2001:db8::1")
    text = csr_pem(csr)
    assert text.startswith("-----BEGIN CERTIFICATE REQUEST-----")
    (tmp_path / "req.pem").write_text(text)
    out = openssl("req", "-in", "req.pem", "-verify", "-noout", cwd=tmp_path)
    assert "verify OK" in out.stdout + out.stderr
    dump = openssl("req", "-in", "req.pem", "-noout", "-text", cwd=tmp_path).stdout
    assert re.search(r"challengePassword\s*:Not-The-Default 42", dump)
    assert "IP Address:2001:DB8:0:0:0:0:0:1" in dump
    assert "unstructuredAddress = 10.1.1.1" in dump
    sig = {"rsa": "sha384WithRSAEncryption", "ed25519": "ED25519"}.get(kind, "ecdsa-with-SHA384")
    assert f"Signature Algorithm: {sig}" in dump
    assert csr.is_signature_valid


def test_csr_without_password(keys, tmp_path: Path):
    csr = make_csr(keys["rsa"][1], parse_subject("CN=r1"), challenge_password=None,
                   digest_name=None)
    (tmp_path / "req.pem").write_text(csr_pem(csr))
    dump = openssl("req", "-in", "req.pem", "-noout", "-text", cwd=tmp_path).stdout
    assert "challengePassword" not in dump
    assert "sha256WithRSAEncryption" in dump
    secret = "p" * 300
    with expect("challenge-password-invalid") as info:
        make_csr(keys["rsa"][1], parse_subject("CN=r1"), challenge_password=secret,
                 digest_name=None)
    assert secret not in info.value.message
    with expect("subject-invalid"):
        make_csr(keys["rsa"][1], parse_subject("CN=r1"), challenge_password=None,
                 digest_name=None, ip_address="10.1.1")


# ---- subject parsing --------------------------------------------------------------

def test_parse_subject_order_and_values():
    name = parse_subject(CA_SUBJECT)
    assert [(a.oid, a.value) for a in name] == [
        (NameOID.COMMON_NAME, "lab1-ca"), (NameOID.COUNTRY_NAME, "US"),
        (NameOID.STATE_OR_PROVINCE_NAME, "CA"), (NameOID.LOCALITY_NAME, "San Jose"),
        (NameOID.ORGANIZATION_NAME, "cisco systems"), (NameOID.ORGANIZATIONAL_UNIT_NAME, "ASR")]
    name = parse_subject(r"cn=a\,b , o = x\\y\=z,c=nl, emailAddress=ops@example.net,DC=example,"
                         r"serialnumber=FOC2245X0AB,UnstructuredName=r1.example.net,"
                         r"unstructuredAddress=192.0.2.1")
    assert [a.value for a in name] == ["a,b", "x\\y=z", "NL", "ops@example.net", "example",
                                       "FOC2245X0AB", "r1.example.net", "192.0.2.1"]
    assert name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "a,b"
    assert parse_subject("CN=Zürich Ω").rdns[0].get_attributes_for_oid(
        NameOID.COMMON_NAME)[0].value == "Zürich Ω"


@pytest.mark.parametrize("text", [
    "", "   ", "CN", "CN=", "CN=  ", "=x", "X=1", "CN=a,,O=b", "CN=a,", "C=USA", "C=1A", "C=",
    "CN=a\\", "CN=a\\q", "CN=" + "x" * 65, "serialNumber=a@b", "emailAddress=é@example.net",
    "SN=x", "E=a@b.c", "CN=a\x00b", ",".join(["O=x"] * 33), "CN=" + "x" * 5000,
])
def test_parse_subject_errors(text):
    with expect("subject-invalid", "invalid-value"):
        parse_subject(text)


def test_device_subject_errors():
    with expect("subject-invalid"):
        device_subject(None, "bad host name", None, None)
    with expect("subject-invalid"):
        device_subject(None, None, "x@y", None)
    with expect("subject-invalid"):
        device_subject(None, None, None, "999.1.1.1")


def test_matches_key(keys):
    ca_key, leaf_key = keys["rsa"]
    root, leaf = system_trustpoint(ca_key, leaf_key)
    assert matches_key(root, ca_key) and matches_key(root, ca_key.public_key())
    assert matches_key(leaf, leaf_key.public_key())
    assert not matches_key(root, leaf_key.public_key())
    assert not matches_key(leaf, keys["ed25519"][0].public_key())
    assert not matches_key(leaf, None)
