"""Path validation (backends.engine.x509.pinnedpath) against certificates made by the openssl CLI.

Every certificate has fixed validity dates (`openssl ca -startdate/-enddate`), and every
test pins `at`, so nothing depends on today's date. A few verdicts are cross-checked
with `openssl verify -attime ... -partial_chain`.
"""
from __future__ import annotations

import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from backends.engine.x509 import pinnedpath
from backends.engine.x509.pinnedpath import PathError, check_key_usage_digital_signature, validate
from openssl_ca import Issued, OpensslCa, lazily_broken

AT = datetime(2025, 6, 1, tzinfo=timezone.utc)
LEAF_EXT = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"


class Pki(OpensslCa):
    def crl(self, issuer: Issued, name: str, last: str = "20250101000000Z",
            nxt: str = "20260101000000Z") -> x509.CertificateRevocationList:
        return x509.load_pem_x509_crl(self.crl_pem(issuer, name, last, nxt))

    def write_pems(self, name: str, certs: list[x509.Certificate]) -> Path:
        path = self.base / f"{name}.bundle.pem"
        path.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in certs))
        return path

    def openssl_verify(self, leaf: x509.Certificate, anchors: list[x509.Certificate],
                       intermediates: list[x509.Certificate] = (), *, at: datetime, extra: tuple = ()) -> bool:
        """`openssl verify` verdict for the same inputs (an independent implementation)."""
        cmd = ["openssl", "verify", "-attime", str(int(at.timestamp())), "-partial_chain",
               "-CAfile", str(self.write_pems("anchors", anchors))]
        if intermediates:
            cmd += ["-untrusted", str(self.write_pems("untrusted", list(intermediates)))]
        cmd += [*extra, str(self.write_pems("leaf", [leaf]))]
        return subprocess.run(cmd, cwd=self.base, capture_output=True).returncode == 0


def code_of(leaf, anchors, intermediates=(), **kw) -> str:
    kw.setdefault("at", AT)
    with pytest.raises(PathError) as e:
        validate(leaf, anchors, intermediates, **kw)
    return e.value.code


@pytest.fixture
def pki(tmp_path) -> Pki:
    return Pki(tmp_path)


@pytest.fixture(scope="module")
def rsa(tmp_path_factory):
    """root -> inter -> leaf, RSA-2048, shared read-only by several tests."""
    p = Pki(tmp_path_factory.mktemp("rsa"))
    root = p.issue("root", "Test Root", alg="rsa2048")
    inter = p.issue("inter", "Test Inter", root, alg="rsa2048")
    leaf = p.issue("leaf", "leaf.example", inter, alg="rsa2048", ext=LEAF_EXT)
    return p, root, inter, leaf


# --- valid paths ---------------------------------------------------------------------

def test_root_intermediate_leaf_valid(rsa):
    p, root, inter, leaf = rsa
    path = validate(leaf.cert, [root.cert], [inter.cert], at=AT)
    assert path == [leaf.cert, inter.cert, root.cert]
    assert p.openssl_verify(leaf.cert, [root.cert], [inter.cert], at=AT)
    # Extra unrelated certificates and a duplicate of the anchor among intermediates change nothing.
    assert validate(leaf.cert, [root.cert], [root.cert, leaf.cert, inter.cert], at=AT) == path
    assert validate(leaf.cert, [root.cert], [inter.cert], at=AT, partial_chain=False) == path


def test_partial_chain_to_intermediate_anchor(rsa):
    p, root, inter, leaf = rsa
    assert validate(leaf.cert, [inter.cert], at=AT) == [leaf.cert, inter.cert]
    assert p.openssl_verify(leaf.cert, [inter.cert], at=AT)
    # Without partial_chain the path must end at a self-signed anchor.
    assert code_of(leaf.cert, [inter.cert], partial_chain=False) == "path-untrusted"
    assert validate(leaf.cert, [inter.cert, root.cert], at=AT, partial_chain=False) == [
        leaf.cert, inter.cert, root.cert]


def test_leaf_itself_is_the_anchor(rsa):
    _, root, inter, leaf = rsa
    assert validate(leaf.cert, [root.cert, leaf.cert], [inter.cert], at=AT) == [leaf.cert]
    # Only the leaf's validity is checked then.
    late = datetime(2041, 1, 1, tzinfo=timezone.utc)
    assert code_of(leaf.cert, [leaf.cert], at=late) == "path-expired"


def test_self_signed_leaf_anchor(pki):
    # Like a self-signed pinned-domain-cert: no cA, yet trusted because it is pinned.
    pinned = pki.issue("pinned", "owner.example", ext="keyUsage=critical,digitalSignature\n")
    assert validate(pinned.cert, [pinned.cert], at=AT) == [pinned.cert]
    assert validate(pinned.cert, [pinned.cert], at=AT, partial_chain=False) == [pinned.cert]
    other = pki.issue("other", "Other Root")
    assert code_of(pinned.cert, [other.cert]) == "path-untrusted"


def test_leaf_matched_by_subject_and_key(pki):
    pinned = pki.issue("pinned", "owner.example", ext=LEAF_EXT)
    again = pki.issue("again", "owner.example", key=pinned.key, ext=LEAF_EXT, start="20240101000000Z")
    assert again.cert != pinned.cert
    assert validate(pinned.cert, [again.cert], at=AT) == [pinned.cert]


# --- untrusted, expired, signatures ------------------------------------------------------

def test_missing_intermediate(rsa):
    p, root, inter, leaf = rsa
    with pytest.raises(PathError) as e:
        validate(leaf.cert, [root.cert], at=AT)
    assert e.value.code == "path-untrusted"
    assert "CN=Test Inter" in e.value.message
    assert not p.openssl_verify(leaf.cert, [root.cert], at=AT)


def test_expired_intermediate(pki):
    root = pki.issue("root", "Root")
    inter = pki.issue("inter", "Old Inter", root, end="20240101000000Z")
    leaf = pki.issue("leaf", "leaf.example", inter, ext=LEAF_EXT, end="20231201000000Z")
    # leaf too is expired at AT; move it inside the window to isolate the intermediate
    leaf = pki.issue("leaf2", "leaf.example", inter, ext=LEAF_EXT)
    with pytest.raises(PathError) as e:
        validate(leaf.cert, [root.cert], [inter.cert], at=AT)
    assert e.value.code == "path-expired"
    assert "CN=Old Inter" in e.value.message and "2024-01-01T00:00:00Z" in e.value.message
    assert not pki.openssl_verify(leaf.cert, [root.cert], [inter.cert], at=AT)

    earlier = datetime(2023, 6, 1, tzinfo=timezone.utc)
    assert validate(leaf.cert, [root.cert], [inter.cert], at=earlier) == [leaf.cert, inter.cert, root.cert]
    assert pki.openssl_verify(leaf.cert, [root.cert], [inter.cert], at=earlier)


def test_remembered_path_is_rechecked_for_dates(pki):
    # A path found once is kept; a later call at another time must still see the intermediate expire.
    root = pki.issue("root", "Root")
    inter = pki.issue("inter", "Old Inter", root, end="20240101000000Z")
    leaf = pki.issue("leaf", "leaf.example", inter, ext=LEAF_EXT)
    earlier = datetime(2023, 6, 1, tzinfo=timezone.utc)
    for _ in range(2):
        assert validate(leaf.cert, [root.cert], [inter.cert], at=earlier) == [leaf.cert, inter.cert, root.cert]
        assert code_of(leaf.cert, [root.cert], [inter.cert]) == "path-expired"
    # the intermediate must be offered again: it is not remembered across calls
    assert code_of(leaf.cert, [root.cert], at=earlier) == "path-untrusted"


def test_leaf_not_yet_valid_and_expired_anchor(pki):
    root = pki.issue("root", "Root", end="20250101000000Z")
    leaf = pki.issue("leaf", "leaf.example", root, ext=LEAF_EXT, start="20300101000000Z")
    with pytest.raises(PathError) as e:
        validate(leaf.cert, [root.cert], at=datetime(2035, 1, 1, tzinfo=timezone.utc))
    assert e.value.code == "path-expired" and "trust anchor" in e.value.message
    with pytest.raises(PathError) as e:
        validate(leaf.cert, [root.cert], at=datetime(2024, 1, 1, tzinfo=timezone.utc))
    assert e.value.code == "path-expired" and "not yet valid" in e.value.message


def test_tampered_signature(rsa):
    p, root, inter, leaf = rsa
    der = bytearray(leaf.cert.public_bytes(Encoding.DER))
    der[-1] ^= 0x01  # last byte of signatureValue
    bad_sig = x509.load_der_x509_certificate(bytes(der))
    assert code_of(bad_sig, [root.cert], [inter.cert]) == "path-signature-invalid"
    assert not p.openssl_verify(bad_sig, [root.cert], [inter.cert], at=AT)

    der = bytearray(leaf.cert.public_bytes(Encoding.DER))
    i = der.index(b"leaf.example")
    der[i] ^= 0x02  # a byte of the subject inside tbsCertificate ('l' -> 'n')
    bad_tbs = x509.load_der_x509_certificate(bytes(der))
    assert bad_tbs.subject != leaf.cert.subject
    assert code_of(bad_tbs, [root.cert], [inter.cert]) == "path-signature-invalid"


def test_two_issuers_same_name_backtracking(pki):
    root = pki.issue("root", "Root")
    good = pki.issue("good", "Inter", root)
    ski = good.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
    # Same name and same SKI, other key: the AKI of the leaf cannot tell them apart.
    decoy = pki.issue("decoy", "Inter", root, ski=ski)
    leaf = pki.issue("leaf", "leaf.example", good, ext=LEAF_EXT)
    for order in ([decoy.cert, good.cert], [good.cert, decoy.cert]):
        assert validate(leaf.cert, [root.cert], order, at=AT) == [leaf.cert, good.cert, root.cert]
    # Both as anchors (partial chain): still finds the one that verifies.
    assert validate(leaf.cert, [decoy.cert, good.cert], at=AT) == [leaf.cert, good.cert]
    assert code_of(leaf.cert, [root.cert], [decoy.cert]) == "path-signature-invalid"


def test_backtracking_past_a_dead_end(pki):
    # Two issuers named "Inter": the first leads nowhere (its root is not trusted).
    root = pki.issue("root", "Root")
    stray_root = pki.issue("stray", "Stray Root")
    stray = pki.issue("interS", "Inter", stray_root, key=pki.key("shared", "p256"))
    real = pki.issue("interR", "Inter", root, key=pki.base / "shared.key")
    leaf = pki.issue("leaf", "leaf.example", real, ext=LEAF_EXT)
    assert validate(leaf.cert, [root.cert], [stray.cert, stray_root.cert, real.cert], at=AT) == [
        leaf.cert, real.cert, root.cert]


def test_cross_signed_loop_terminates(pki):
    a_key, b_key = pki.key("a", "p256"), pki.key("b", "p256")
    a0 = pki.issue("a0", "CA A", key=a_key)
    b0 = pki.issue("b0", "CA B", key=b_key)
    a_by_b = pki.issue("a_by_b", "CA A", b0, key=a_key)
    b_by_a = pki.issue("b_by_a", "CA B", a0, key=b_key)
    leaf = pki.issue("leaf", "leaf.example", a0, ext=LEAF_EXT)
    unrelated = pki.issue("unrelated", "Unrelated Root")
    assert code_of(leaf.cert, [unrelated.cert], [a_by_b.cert, b_by_a.cert]) == "path-untrusted"
    # Through the loop to B's self-signed root.
    assert validate(leaf.cert, [b0.cert], [a_by_b.cert, b_by_a.cert], at=AT) == [leaf.cert, a_by_b.cert, b0.cert]


def test_depth_limit(pki):
    chain = [pki.issue("c0", "CA 0")]
    for i in range(1, 8):
        chain.append(pki.issue(f"c{i}", f"CA {i}", chain[-1]))
    leaf8 = pki.issue("leaf8", "leaf8", chain[6], ext=LEAF_EXT)   # 8 certificates: allowed
    path = validate(leaf8.cert, [chain[0].cert], [c.cert for c in chain[1:]], at=AT)
    assert len(path) == 8
    leaf9 = pki.issue("leaf9", "leaf9", chain[7], ext=LEAF_EXT)   # 9 certificates: too long
    with pytest.raises(PathError) as e:
        validate(leaf9.cert, [chain[0].cert], [c.cert for c in chain[1:]], at=AT)
    assert e.value.code == "path-untrusted" and "longer than 8" in e.value.message


def test_too_many_candidates(pki):
    root = pki.issue("root", "Root")
    leaf = pki.issue("leaf", "leaf.example", root, ext=LEAF_EXT)
    key = pki.key("many", "p256")
    many = [pki.issue(f"m{i}", f"M {i}", key=key).cert for i in range(64)]
    with pytest.raises(PathError) as e:
        validate(leaf.cert, [root.cert], many, at=AT)
    assert e.value.code == "path-untrusted" and "too many" in e.value.message
    assert validate(leaf.cert, [root.cert], many[:63], at=AT) == [leaf.cert, root.cert]


# --- CA constraints ----------------------------------------------------------------------

def test_issuer_without_ca(pki):
    root = pki.issue("root", "Root")
    inter = pki.issue("inter", "Inter", root, ext="basicConstraints=critical,CA:FALSE\n"
                                                  "keyUsage=critical,keyCertSign,digitalSignature\n")
    leaf = pki.issue("leaf", "leaf.example", inter, ext=LEAF_EXT)
    assert code_of(leaf.cert, [root.cert], [inter.cert]) == "path-not-ca"
    assert not pki.openssl_verify(leaf.cert, [root.cert], [inter.cert], at=AT)
    # No basicConstraints at all: not a CA either, even as a (partial-chain) anchor.
    bare = pki.issue("bare", "Bare", root, ext="keyUsage=critical,keyCertSign\n")
    leaf2 = pki.issue("leaf2", "leaf2.example", bare, ext=LEAF_EXT)
    assert code_of(leaf2.cert, [bare.cert]) == "path-not-ca"


def test_issuer_key_usage_without_key_cert_sign(pki):
    root = pki.issue("root", "Root")
    inter = pki.issue("inter", "Inter", root, ext="basicConstraints=critical,CA:TRUE\n"
                                                  "keyUsage=critical,digitalSignature,cRLSign\n")
    leaf = pki.issue("leaf", "leaf.example", inter, ext=LEAF_EXT)
    with pytest.raises(PathError) as e:
        validate(leaf.cert, [root.cert], [inter.cert], at=AT)
    assert e.value.code == "path-not-ca" and "keyCertSign" in e.value.message
    assert not pki.openssl_verify(leaf.cert, [root.cert], [inter.cert], at=AT)


def test_path_len_constraint(pki):
    root = pki.issue("root", "Root", ext="basicConstraints=critical,CA:TRUE,pathlen:0\n"
                                         "keyUsage=critical,keyCertSign,cRLSign\n")
    inter = pki.issue("inter", "Inter", root)
    leaf = pki.issue("leaf", "leaf.example", inter, ext=LEAF_EXT)
    with pytest.raises(PathError) as e:
        validate(leaf.cert, [root.cert], [inter.cert], at=AT)
    assert e.value.code == "path-not-ca" and "pathLenConstraint 0" in e.value.message
    assert not pki.openssl_verify(leaf.cert, [root.cert], [inter.cert], at=AT)
    # pathlen:0 still allows issuing end-entity certificates directly.
    direct = pki.issue("direct", "direct.example", root, ext=LEAF_EXT)
    assert validate(direct.cert, [root.cert], at=AT) == [direct.cert, root.cert]
    # and an intermediate anchor below it is fine (the root is not on that path)
    assert validate(leaf.cert, [inter.cert], at=AT) == [leaf.cert, inter.cert]

    root1 = pki.issue("root1", "Root1", ext="basicConstraints=critical,CA:TRUE,pathlen:1\n"
                                           "keyUsage=critical,keyCertSign\n")
    inter1 = pki.issue("inter1", "Inter1", root1)
    leaf1 = pki.issue("leaf1", "leaf1.example", inter1, ext=LEAF_EXT)
    assert validate(leaf1.cert, [root1.cert], [inter1.cert], at=AT) == [leaf1.cert, inter1.cert, root1.cert]


# --- algorithms --------------------------------------------------------------------------

def test_sha1_refused_unless_allowed(pki):
    root = pki.issue("root", "Root", alg="rsa2048")
    leaf = pki.issue("leaf", "leaf.example", root, alg="rsa2048", ext=LEAF_EXT, md="sha1")
    assert leaf.cert.signature_hash_algorithm.name == "sha1"
    with pytest.raises(PathError) as e:
        validate(leaf.cert, [root.cert], at=AT)
    assert e.value.code == "path-weak-algorithm" and "SHA-1" in e.value.message
    assert validate(leaf.cert, [root.cert], at=AT, allow_sha1=True) == [leaf.cert, root.cert]


def test_md5_always_refused(pki):
    root = pki.issue("root", "Root", alg="rsa2048")
    leaf = pki.issue("leaf", "leaf.example", root, alg="rsa2048", ext=LEAF_EXT, md="md5")
    assert code_of(leaf.cert, [root.cert], allow_sha1=True) == "path-weak-algorithm"


def test_rsa_1024_refused(pki):
    root = pki.issue("root", "Root", alg="rsa2048")
    weak_inter = pki.issue("inter", "Inter", root, alg="rsa1024")
    leaf = pki.issue("leaf", "leaf.example", weak_inter, alg="rsa2048", ext=LEAF_EXT)
    with pytest.raises(PathError) as e:
        validate(leaf.cert, [root.cert], [weak_inter.cert], at=AT)
    assert e.value.code == "path-weak-algorithm" and "RSA-1024" in e.value.message
    weak_leaf = pki.issue("wleaf", "weak.example", root, alg="rsa1024", ext=LEAF_EXT)
    assert code_of(weak_leaf.cert, [root.cert]) == "path-weak-algorithm"


@pytest.mark.parametrize("alg,sigopts", [
    ("rsa2048", ()),
    ("rsa2048", ("rsa_padding_mode:pss", "rsa_pss_saltlen:32")),
    ("p256", ()),
    ("p384", ()),
    ("ed25519", ()),
], ids=["rsa-pkcs1", "rsa-pss", "ecdsa-p256", "ecdsa-p384", "ed25519"])
def test_algorithm_chains(pki, alg, sigopts):
    root = pki.issue("root", "Root", alg=alg, sigopts=sigopts)
    inter = pki.issue("inter", "Inter", root, alg=alg, sigopts=sigopts)
    leaf = pki.issue("leaf", "leaf.example", inter, alg=alg, ext=LEAF_EXT, sigopts=sigopts)
    if sigopts:
        assert leaf.cert.signature_algorithm_oid == x509.SignatureAlgorithmOID.RSASSA_PSS
    assert validate(leaf.cert, [root.cert], [inter.cert], at=AT) == [leaf.cert, inter.cert, root.cert]
    assert pki.openssl_verify(leaf.cert, [root.cert], [inter.cert], at=AT)
    der = bytearray(leaf.cert.public_bytes(Encoding.DER))
    der[der.index(b"leaf.example")] ^= 0x02
    tampered = x509.load_der_x509_certificate(bytes(der))
    assert code_of(tampered, [root.cert], [inter.cert]) == "path-signature-invalid"
    # The hand-written verifier (used where verify_directly_issued_by cannot) agrees.
    key = inter.cert.public_key()
    assert pinnedpath._signed_by(leaf.cert, key, leaf.cert.tbs_certificate_bytes)
    assert not pinnedpath._signed_by(tampered, key, tampered.tbs_certificate_bytes)
    assert not pinnedpath._signed_by(leaf.cert, root.cert.public_key(), leaf.cert.tbs_certificate_bytes)


def test_mixed_algorithms(pki):
    root = pki.issue("root", "Root", alg="rsa2048")
    inter = pki.issue("inter", "Inter", root, alg="p384")
    leaf = pki.issue("leaf", "leaf.example", inter, alg="ed25519", ext=LEAF_EXT)
    assert validate(leaf.cert, [root.cert], [inter.cert], at=AT) == [leaf.cert, inter.cert, root.cert]


# --- anchors -----------------------------------------------------------------------------

def test_reissued_anchor_matched_by_subject_and_key(pki):
    old_root = pki.issue("root", "Root", end="20250101000000Z")   # expired at AT
    inter = pki.issue("inter", "Inter", old_root)
    leaf = pki.issue("leaf", "leaf.example", inter, ext=LEAF_EXT)
    new_root = pki.issue("root2", "Root", key=old_root.key, start="20240101000000Z", end="20450101000000Z")
    assert new_root.cert != old_root.cert
    # The old root arrives with the chain (e.g. in a CMS bag); the re-issued one is the anchor.
    path = validate(leaf.cert, [new_root.cert], [inter.cert, old_root.cert], at=AT)
    assert path == [leaf.cert, inter.cert, new_root.cert]
    assert code_of(leaf.cert, [old_root.cert], [inter.cert]) == "path-expired"
    # An intermediate that was re-issued (same subject and key) is recognised as the anchor too.
    inter_again = pki.issue("inter2", "Inter", old_root, key=inter.key, start="20240101000000Z")
    assert validate(leaf.cert, [inter_again.cert], [inter.cert], at=AT)[-1] == inter_again.cert


# --- revocation --------------------------------------------------------------------------

@pytest.fixture
def crl_chain(pki):
    root = pki.issue("root", "Root")
    inter = pki.issue("inter", "Inter", root)
    leaf = pki.issue("leaf", "leaf.example", inter, ext=LEAF_EXT)
    other = pki.issue("other", "other.example", inter, ext=LEAF_EXT)
    return pki, root, inter, leaf, other


def test_revoked_leaf(crl_chain):
    pki, root, inter, leaf, other = crl_chain
    pki.revoke(inter, leaf)
    crl = pki.crl(inter, "inter")
    assert crl.get_revoked_certificate_by_serial_number(leaf.cert.serial_number) is not None
    with pytest.raises(PathError) as e:
        validate(leaf.cert, [root.cert], [inter.cert], at=AT, crls=[crl])
    assert e.value.code == "path-revoked" and "leaf.example" in e.value.message
    assert validate(other.cert, [root.cert], [inter.cert], at=AT, crls=[crl]) == [other.cert, inter.cert, root.cert]
    # openssl agrees (leaf-only CRL check)
    crl_file = pki.base / "inter.crl.pem"
    assert not pki.openssl_verify(leaf.cert, [root.cert], [inter.cert], at=AT, extra=("-crl_check", "-CRLfile", str(crl_file)))
    assert pki.openssl_verify(other.cert, [root.cert], [inter.cert], at=AT, extra=("-crl_check", "-CRLfile", str(crl_file)))
    # A CRL that is not current at `at` is not used.
    assert validate(leaf.cert, [root.cert], [inter.cert], at=datetime(2027, 1, 1, tzinfo=timezone.utc),
                    crls=[crl]) == [leaf.cert, inter.cert, root.cert]


def test_require_revocation(crl_chain):
    pki, root, inter, leaf, _ = crl_chain
    assert code_of(leaf.cert, [root.cert], [inter.cert], require_revocation=True) == "path-crl-missing"
    inter_crl = pki.crl(inter, "inter")
    # The intermediate needs one from the root too.
    with pytest.raises(PathError) as e:
        validate(leaf.cert, [root.cert], [inter.cert], at=AT, crls=[inter_crl], require_revocation=True)
    assert e.value.code == "path-crl-missing" and "CN=Root" in e.value.message
    root_crl = pki.crl(root, "root")
    crls = [inter_crl, root_crl]
    assert validate(leaf.cert, [root.cert], [inter.cert], at=AT, crls=crls,
                    require_revocation=True) == [leaf.cert, inter.cert, root.cert]
    # The anchor itself needs no CRL (partial chain to the intermediate).
    assert validate(leaf.cert, [inter.cert], at=AT, crls=[inter_crl], require_revocation=True) == [
        leaf.cert, inter.cert]
    # Stale: `at` after nextUpdate.
    late = datetime(2026, 6, 1, tzinfo=timezone.utc)
    assert code_of(leaf.cert, [root.cert], [inter.cert], at=late, crls=crls,
                   require_revocation=True) == "path-crl-missing"
    # A CRL with the right issuer name but signed by another key does not count.
    fake = pki.issue("fake", "Inter", root)
    fake_crl = pki.crl(fake, "fake")
    assert fake_crl.issuer == inter.cert.subject
    assert code_of(leaf.cert, [root.cert], [inter.cert], crls=[fake_crl, root_crl],
                   require_revocation=True) == "path-crl-missing"


# --- purposes and key usage --------------------------------------------------------------

def test_eku_server_auth_on_leaf_is_ignored(pki):
    root = pki.issue("root", "Root")
    leaf = pki.issue("leaf", "voucher-signer.example", root,
                     ext=LEAF_EXT + "extendedKeyUsage=serverAuth,clientAuth\n")
    assert validate(leaf.cert, [root.cert], at=AT) == [leaf.cert, root.cert]


def test_check_key_usage_digital_signature(pki):
    no_ku = pki.issue("noku", "a.example", ext="basicConstraints=CA:FALSE\n")
    ds = pki.issue("ds", "b.example", ext="keyUsage=critical,digitalSignature,keyEncipherment\n")
    cert_sign = pki.issue("cs", "c.example", ext="basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign\n")
    check_key_usage_digital_signature(no_ku.cert)
    check_key_usage_digital_signature(ds.cert)
    with pytest.raises(PathError) as e:
        check_key_usage_digital_signature(cert_sign.cert)
    assert e.value.code == "oc-key-usage"


def test_at_must_be_aware(rsa):
    _, root, inter, leaf = rsa
    with pytest.raises(ValueError):
        validate(leaf.cert, [root.cert], [inter.cert], at=datetime(2025, 6, 1))


# --- certificates cryptography reads lazily ---------------------------------------------

@pytest.mark.parametrize("how", ["name", "extension"])
def test_certificates_that_fail_when_read_are_never_on_a_path(rsa, how):
    p, root, inter, leaf = rsa
    with pytest.raises((ValueError, x509.DuplicateExtension)):
        bad = lazily_broken(inter.cert, how)
        bad.subject, bad.extensions
    assert code_of(leaf.cert, [root.cert], [lazily_broken(inter.cert, how)]) == "path-untrusted"
    assert code_of(lazily_broken(leaf.cert, how), [root.cert], [inter.cert]) == "path-untrusted"
    assert code_of(leaf.cert, [lazily_broken(root.cert, how)], [inter.cert]) == "path-untrusted"

