"""Trust point / trust pool path validation (backends.engine.x509.trustpointpath) and the CRL cache
(backends.engine.x509.crl), with certificates and CRLs made by the openssl CLI.

Certificates and CRLs carry fixed dates and every check pins `at`, so nothing depends on
today's date. CRLs are served by a loopback http.server started by the tests.
"""
from __future__ import annotations

import hashlib
import http.server
import socket
import subprocess
import threading
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from backends.engine.x509 import crl as crlmod
from backends.engine.x509.crl import CrlCache, CrlError
from backends.engine.errors import EngineError
from backends.engine.x509.expiry import serial_text
from backends.engine.x509.trustpointpath import TrustpointPathError, Verified, is_expired_anchor, verify
from openssl_ca import CA_EXT, Issued, OpensslCa, lazily_broken

AT = datetime(2025, 6, 1, tzinfo=timezone.utc)
CRL_LAST, CRL_NEXT = "20250501000000Z", "20250701000000Z"
REVOKED_AT = "250315120000Z"      # index.txt form of 2025-03-15T12:00:00Z

# A router certificate as IOS XR enrolls it: no subjectAltName, no extendedKeyUsage.
ROUTER_EXT = "keyUsage=critical,digitalSignature,keyEncipherment\n"


class Pki(OpensslCa):
    def crl(self, issuer: Issued, name: str, last: str = CRL_LAST, nxt: str = CRL_NEXT,
            pem: bool = False) -> bytes:
        data = self.crl_pem(issuer, name, last, nxt)
        return data if pem else x509.load_pem_x509_crl(data).public_bytes(Encoding.DER)

    def openssl_verify(self, leaf: Issued, anchor: Issued, intermediates: list[Issued], at: datetime) -> bool:
        """`openssl verify` verdict for the same path (an independent implementation)."""
        cmd = ["openssl", "verify", "-attime", str(int(at.timestamp())), "-CAfile", str(anchor.pem)]
        if intermediates:
            untrusted = self.base / "untrusted.pem"
            untrusted.write_bytes(b"".join(i.pem.read_bytes() for i in intermediates))
            cmd += ["-untrusted", str(untrusted)]
        return subprocess.run([*cmd, str(leaf.pem)], capture_output=True).returncode == 0


class CrlServer:
    """A loopback HTTP server for CRLs: `files` maps a path to its body; `hits` lists requests."""

    def __init__(self):
        files: dict[str, bytes] = {}
        hits: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                hits.append(self.path)
                body = files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/pkix-crl")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.files, self.hits = files, hits
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server():
    s = CrlServer()
    yield s
    s.close()


@pytest.fixture
def pki(tmp_path) -> Pki:
    (tmp_path / "pki").mkdir()
    return Pki(tmp_path / "pki")


@pytest.fixture
def cache(tmp_path) -> CrlCache:
    return CrlCache(tmp_path / "crls", timeout=5.0)


def refused(code: str, **kw) -> TrustpointPathError:
    kw.setdefault("intermediates", [])
    kw.setdefault("trustpoint_cas", [])
    kw.setdefault("trustpool", [])
    kw.setdefault("at", AT)
    kw.setdefault("trustpoint_crl_optional", True)
    kw.setdefault("trustpool_crl_optional", True)
    kw.setdefault("crls", None)
    leaf = kw.pop("leaf")
    with pytest.raises(TrustpointPathError) as e:
        verify(leaf, **kw)
    assert e.value.code == code, e.value.message
    assert isinstance(e.value, EngineError)
    return e.value


# --- paths ------------------------------------------------------------------------------

def test_router_certificate_without_san_or_eku(pki):
    root = pki.issue("root", "Root CA")
    inter = pki.issue("inter", "Issuing CA", root)
    leaf = pki.issue("leaf", "router1.example", inter, ext=ROUTER_EXT, serial=0x2EC)
    assert leaf.cert.extensions.get_extension_for_class(x509.KeyUsage)
    for absent in (x509.SubjectAlternativeName, x509.ExtendedKeyUsage):
        with pytest.raises(x509.ExtensionNotFound):
            leaf.cert.extensions.get_extension_for_class(absent)
    v = verify(leaf.cert, intermediates=[inter.cert], trustpoint_cas=[root.cert], trustpool=[], at=AT,
               trustpoint_crl_optional=True, trustpool_crl_optional=True, crls=None)
    assert v == Verified(chain=[leaf.cert, inter.cert, root.cert], source="trustpoint")
    assert pki.openssl_verify(leaf, root, [inter], AT)


def test_no_path_is_untrusted(pki):
    root = pki.issue("root", "Root CA")
    other = pki.issue("other", "Other CA")
    leaf = pki.issue("leaf", "router1.example", root, ext=ROUTER_EXT, serial=0x2EC)
    e = refused("cert-untrusted", leaf=leaf.cert, trustpoint_cas=[other.cert])
    assert e.message == ("certificate CN=router1.example (serial 02:EC) does not chain to a CA "
                         "of the trust point")
    assert e.tag == "invalid-value"
    e = refused("cert-untrusted", leaf=leaf.cert)
    assert "hold no usable CA certificate" in e.message
    assert not pki.openssl_verify(leaf, other, [], AT)


@pytest.mark.parametrize("how", ["name", "extension"])
def test_certificates_that_fail_when_read(pki, how):
    root = pki.issue("root", "Root CA")
    inter = pki.issue("inter", "Issuing CA", root)
    leaf = pki.issue("leaf", "router1.example", inter, ext=ROUTER_EXT, serial=0x2EC)
    e = refused("cert-untrusted", leaf=lazily_broken(leaf.cert, how), intermediates=[inter.cert],
                trustpoint_cas=[root.cert])
    assert "malformed name or malformed extensions" in e.message
    refused("cert-untrusted", leaf=leaf.cert, intermediates=[lazily_broken(inter.cert, how)],
            trustpoint_cas=[root.cert])
    e = refused("cert-untrusted", leaf=leaf.cert, intermediates=[inter.cert],
                trustpoint_cas=[lazily_broken(root.cert, how)])
    assert "hold no usable CA certificate" in e.message


def test_ca_without_basic_constraints_ca_is_refused(pki):
    fake = pki.issue("fake", "Not A CA", ext="keyUsage=critical,keyCertSign,cRLSign\n")
    leaf = pki.issue("leaf", "router1.example", fake, ext=ROUTER_EXT)
    e = refused("cert-untrusted", leaf=leaf.cert, trustpoint_cas=[fake.cert])
    assert "chains to a CA of the trust point but the path is not acceptable" in e.message
    assert "basicConstraints" in e.message
    # A CA-capable intermediate whose cA is false cannot issue either.
    root = pki.issue("root", "Root CA")
    mid = pki.issue("mid", "Mid", root, ext="basicConstraints=critical,CA:FALSE\nkeyUsage=keyCertSign\n")
    leaf2 = pki.issue("leaf2", "router2.example", mid, ext=ROUTER_EXT)
    refused("cert-untrusted", leaf=leaf2.cert, intermediates=[mid.cert], trustpoint_cas=[root.cert])


def test_verifier_policy_checks_that_stay_on(pki):
    root = pki.issue("root", "Root CA", ext=CA_EXT + "nameConstraints=critical,permitted;DNS:good.example\n")
    inside = pki.issue("in", "router1", root, ext=ROUTER_EXT + "subjectAltName=DNS:r1.good.example\n")
    outside = pki.issue("out", "router2", root, ext=ROUTER_EXT + "subjectAltName=DNS:r2.bad.example\n")
    unknown = pki.issue("unk", "router3", root, ext=ROUTER_EXT + "1.2.3.4=critical,ASN1:NULL\n")
    # The end-entity policy permits any extended key usage (IOS XR does not require clientAuth).
    server_only = pki.issue("srv", "router4", root, ext=ROUTER_EXT + "extendedKeyUsage=serverAuth\n")
    ok = dict(intermediates=[], trustpoint_cas=[root.cert], trustpool=[], at=AT,
              trustpoint_crl_optional=True, trustpool_crl_optional=True, crls=None)
    assert verify(inside.cert, **ok).chain == [inside.cert, root.cert]
    assert verify(server_only.cert, **ok).chain == [server_only.cert, root.cert]
    e = refused("cert-untrusted", leaf=outside.cert, trustpoint_cas=[root.cert])
    assert "name constraints" in e.message
    e = refused("cert-untrusted", leaf=unknown.cert, trustpoint_cas=[root.cert])
    assert "critical extensions" in e.message


def test_weak_leaf_key_and_sha1_signature(pki):
    root = pki.issue("root", "Root CA")
    weak = pki.issue("weak", "router1.example", root, ext=ROUTER_EXT, alg="rsa1024", serial=0x2EC)
    e = refused("cert-untrusted", leaf=weak.cert, trustpoint_cas=[root.cert])
    assert e.message == ("certificate CN=router1.example (serial 02:EC) is refused: RSA-1024 key, "
                         "below the 2048-bit minimum")
    sha1 = pki.issue("sha1", "router2.example", root, ext=ROUTER_EXT, md="sha1")
    e = refused("cert-untrusted", leaf=sha1.cert, trustpoint_cas=[root.cert])
    assert e.message.startswith(f"certificate CN=router2.example (serial {serial_text(sha1.cert.serial_number)}) "
                                "does not chain to a CA of the trust point: ")
    assert "Forbidden signature algorithm" in e.message


def test_is_expired_anchor(pki):
    old = pki.issue("old", "Old Root CA", start="20200101000000Z", end="20250101000000Z")
    assert is_expired_anchor(old.cert, AT)
    assert not is_expired_anchor(old.cert, datetime(2024, 12, 31, tzinfo=timezone.utc))


def test_path_length_constraint_is_enforced(pki):
    root = pki.issue("root", "Root CA", ext=CA_EXT.replace("CA:TRUE", "CA:TRUE,pathlen:0"))
    inter = pki.issue("inter", "Issuing CA", root)
    leaf = pki.issue("leaf", "router1.example", inter, ext=ROUTER_EXT)
    e = refused("cert-untrusted", leaf=leaf.cert, intermediates=[inter.cert], trustpoint_cas=[root.cert])
    assert "path length constraint" in e.message
    assert not pki.openssl_verify(leaf, root, [inter], AT)


def test_expired_leaf_intermediate_and_anchor(pki):
    root = pki.issue("root", "Root CA")
    old_leaf = pki.issue("oldleaf", "router1.example", root, ext=ROUTER_EXT, serial=0x2EC,
                         start="20200101000000Z", end="20250101000000Z")
    e = refused("cert-expired", leaf=old_leaf.cert, trustpoint_cas=[root.cert])
    assert e.message == ("certificate CN=router1.example (serial 02:EC) is expired at 2025-06-01T00:00:00Z "
                         "(notBefore 2020-01-01T00:00:00Z, notAfter 2025-01-01T00:00:00Z)")
    assert not pki.openssl_verify(old_leaf, root, [], AT)

    future = pki.issue("future", "router2.example", root, ext=ROUTER_EXT, start="20260101000000Z")
    assert "is not yet valid" in refused("cert-expired", leaf=future.cert, trustpoint_cas=[root.cert]).message

    old_inter = pki.issue("oldinter", "Old Issuing CA", root, start="20200101000000Z", end="20250101000000Z")
    leaf = pki.issue("leaf", "router3.example", old_inter, ext=ROUTER_EXT)
    e = refused("cert-expired", leaf=leaf.cert, intermediates=[old_inter.cert], trustpoint_cas=[root.cert])
    assert e.message.startswith("intermediate CA certificate CN=Old Issuing CA")

    old_root = pki.issue("oldroot", "Old Root CA", start="20200101000000Z", end="20250101000000Z")
    leaf = pki.issue("leaf4", "router4.example", old_root, ext=ROUTER_EXT)
    e = refused("ca-expired", leaf=leaf.cert, trustpoint_cas=[old_root.cert])
    assert e.message.startswith("CA certificate CN=Old Root CA (serial ")
    assert "is expired at 2025-06-01T00:00:00Z" in e.message
    # Still fine while the CA was valid.
    early = datetime(2024, 6, 1, tzinfo=timezone.utc)
    assert verify(leaf.cert, intermediates=[], trustpoint_cas=[old_root.cert], trustpool=[], at=early,
                  trustpoint_crl_optional=True, trustpool_crl_optional=True, crls=None).source == "trustpoint"


def test_naive_time_is_a_programming_error(pki):
    root = pki.issue("root", "Root CA")
    with pytest.raises(ValueError):
        verify(root.cert, intermediates=[], trustpoint_cas=[root.cert], trustpool=[], at=AT.replace(tzinfo=None),
               trustpoint_crl_optional=True, trustpool_crl_optional=True, crls=None)


# --- trust point before trust pool -------------------------------------------------------

def test_trustpoint_takes_precedence_over_pool(pki):
    # Same subject in both, different keys: the leaf chains only to the trust point's CA.
    tp_ca = pki.issue("tpca", "Shared CA")
    pool_ca = pki.issue("poolca", "Shared CA")
    assert tp_ca.cert.subject == pool_ca.cert.subject
    leaf = pki.issue("leaf", "router1.example", tp_ca, ext=ROUTER_EXT,
                     cdp=f"http://127.0.0.1:{closed_port()}/shared.crl")
    # The pool's policy would require a CRL that cannot be fetched; the trust point's does not.
    v = verify(leaf.cert, intermediates=[], trustpoint_cas=[tp_ca.cert], trustpool=[pool_ca.cert], at=AT,
               trustpoint_crl_optional=True, trustpool_crl_optional=False, crls=None)
    assert v.source == "trustpoint"
    assert v.chain == [leaf.cert, tp_ca.cert]
    # And the trust point's policy is the one applied when it requires the CRL.
    refused("crl-unavailable", leaf=leaf.cert, trustpoint_cas=[tp_ca.cert], trustpool=[pool_ca.cert],
            trustpoint_crl_optional=False, trustpool_crl_optional=True, crls=CrlCache(pki.base / "c", timeout=2))


def test_trustpoint_failure_other_than_no_path_is_final(pki):
    old = pki.issue("old", "Shared CA", start="20200101000000Z", end="20250101000000Z")
    leaf = pki.issue("leaf", "router1.example", old, ext=ROUTER_EXT)
    refused("ca-expired", leaf=leaf.cert, trustpoint_cas=[old.cert], trustpool=[old.cert])


def test_pool_only_anchor_uses_pool_policy(pki):
    unrelated = pki.issue("tp", "Trustpoint CA")
    pool_ca = pki.issue("pool", "Pool Root CA")
    leaf = pki.issue("leaf", "router1.example", pool_ca, ext=ROUTER_EXT,
                     cdp=f"http://127.0.0.1:{closed_port()}/pool.crl")
    cache = CrlCache(pki.base / "c", timeout=2)
    v = verify(leaf.cert, intermediates=[], trustpoint_cas=[unrelated.cert], trustpool=[pool_ca.cert], at=AT,
               trustpoint_crl_optional=False, trustpool_crl_optional=True, crls=cache)
    assert v == Verified(chain=[leaf.cert, pool_ca.cert], source="trustpool")
    e = refused("crl-unavailable", leaf=leaf.cert, trustpoint_cas=[unrelated.cert], trustpool=[pool_ca.cert],
                trustpoint_crl_optional=True, trustpool_crl_optional=False, crls=cache)
    assert "the trust pool policy requires one" in e.message
    assert e.tag == "operation-failed"


def test_untrusted_everywhere_names_both(pki):
    a, b, c = (pki.issue(n, f"CA {n}") for n in "abc")
    leaf = pki.issue("leaf", "router1.example", c, ext=ROUTER_EXT, serial=0x2EC)
    e = refused("cert-untrusted", leaf=leaf.cert, trustpoint_cas=[a.cert], trustpool=[b.cert])
    assert e.message == ("certificate CN=router1.example (serial 02:EC) does not chain to a CA of the "
                         "trust point; certificate CN=router1.example (serial 02:EC) does not chain to a "
                         "CA of the trust pool")


# --- revocation --------------------------------------------------------------------------

@pytest.fixture
def served(pki, server):
    """root -> inter -> leaf, each pointing at a CRL on the loopback server."""
    root = pki.issue("root", "Root CA")
    inter = pki.issue("inter", "Issuing CA", root, cdp=server.url("/root.crl"))
    leaf = pki.issue("leaf", "router1.example", inter, ext=ROUTER_EXT, serial=0x2EC, cdp=server.url("/inter.crl"))
    server.files["/root.crl"] = pki.crl(root, "root")
    server.files["/inter.crl"] = pki.crl(inter, "inter")
    return root, inter, leaf


def check(leaf, inter, root, cache, **kw):
    return verify(leaf.cert, intermediates=[inter.cert], trustpoint_cas=[root.cert], trustpool=[], at=AT,
                  trustpoint_crl_optional=kw.get("optional", False), trustpool_crl_optional=True, crls=cache)


def test_crl_checked_and_cached(pki, server, served, cache):
    root, inter, leaf = served
    assert check(leaf, inter, root, cache).chain == [leaf.cert, inter.cert, root.cert]
    assert sorted(server.hits) == ["/inter.crl", "/root.crl"]
    # Memory cache: no new download.
    check(leaf, inter, root, cache)
    assert len(server.hits) == 2
    # A new cache on the same directory (a restart) reads the files.
    files = sorted(p.name for p in cache.directory.iterdir())
    url = server.url("/inter.crl")
    assert f"{hashlib.sha256(url.encode()).hexdigest()}.crl" in files
    assert len(files) == 2          # no temp files left behind
    check(leaf, inter, root, CrlCache(cache.directory))
    assert len(server.hits) == 2
    # Past nextUpdate the CRL is downloaded again; the server still has the old one: stale.
    late = datetime(2025, 7, 2, tzinfo=timezone.utc)
    e = refused("crl-unavailable", leaf=leaf.cert, intermediates=[inter.cert], trustpoint_cas=[root.cert],
                at=late, trustpoint_crl_optional=False, crls=cache)
    assert "is stale" in e.message
    assert len(server.hits) == 3


def test_revoked_leaf(pki, server, served, cache):
    root, inter, leaf = served
    pki.revoke(inter, leaf, date=REVOKED_AT)
    server.files["/inter.crl"] = pki.crl(inter, "inter2")
    e = refused("cert-revoked", leaf=leaf.cert, intermediates=[inter.cert], trustpoint_cas=[root.cert],
                trustpoint_crl_optional=False, crls=cache)
    assert e.message == (f"certificate CN=router1.example (serial 02:EC) was revoked on 2025-03-15T12:00:00Z "
                         f"(CRL {server.url('/inter.crl')})")
    # crl optional: not checked at all.
    assert check(leaf, inter, root, cache, optional=True).source == "trustpoint"


def test_revoked_intermediate(pki, server, served, cache):
    root, inter, leaf = served
    pki.revoke(root, inter, date=REVOKED_AT)
    server.files["/root.crl"] = pki.crl(root, "root2")
    e = refused("cert-revoked", leaf=leaf.cert, intermediates=[inter.cert], trustpoint_cas=[root.cert],
                trustpoint_crl_optional=False, crls=cache)
    assert e.message.startswith("certificate CN=Issuing CA (serial ")
    assert "was revoked on 2025-03-15T12:00:00Z" in e.message


def test_unreachable_cdp_fails_closed_unless_optional(pki, cache):
    root = pki.issue("root", "Root CA")
    url = f"http://127.0.0.1:{closed_port()}/root.crl"
    leaf = pki.issue("leaf", "router1.example", root, ext=ROUTER_EXT, serial=0x2EC, cdp=url)
    e = refused("crl-unavailable", leaf=leaf.cert, trustpoint_cas=[root.cert], trustpoint_crl_optional=False,
                crls=cache)
    assert e.message.startswith("no CRL available for CN=router1.example (serial 02:EC) and the trust point "
                                f"policy requires one: CRL download from {url} failed")
    v = verify(leaf.cert, intermediates=[], trustpoint_cas=[root.cert], trustpool=[], at=AT,
               trustpoint_crl_optional=True, trustpool_crl_optional=True, crls=cache)
    assert v.source == "trustpoint"


def test_second_cdp_used_when_first_fails(pki, server, cache):
    root = pki.issue("root", "Root CA")
    dead = f"http://127.0.0.1:{closed_port()}/root.crl"
    leaf = pki.issue("leaf", "router1.example", root, ext=ROUTER_EXT,
                     cdp=f"{dead},URI:{server.url('/root.crl')}")
    server.files["/root.crl"] = pki.crl(root, "root")
    pki.revoke(root, leaf, date=REVOKED_AT)
    server.files["/root.crl"] = pki.crl(root, "root2")
    refused("cert-revoked", leaf=leaf.cert, trustpoint_cas=[root.cert], trustpoint_crl_optional=False, crls=cache)
    # The first CRL obtained decides: a dead mirror after it is not even tried.
    good_first = pki.issue("leaf2", "router2.example", root, ext=ROUTER_EXT,
                           cdp=f"{server.url('/root.crl')},URI:{dead}")
    fetched = []
    real_get = cache.get
    cache.get = lambda url, issuer, now: fetched.append(url) or real_get(url, issuer, now)
    verify(good_first.cert, intermediates=[], trustpoint_cas=[root.cert], trustpool=[], at=AT,
           trustpoint_crl_optional=False, trustpool_crl_optional=True, crls=cache)
    assert fetched == [server.url("/root.crl")]


def test_no_cdp_passes_and_missing_cache_fails_closed(pki, server):
    root = pki.issue("root", "Root CA")
    leaf = pki.issue("leaf", "router1.example", root, ext=ROUTER_EXT)
    assert verify(leaf.cert, intermediates=[], trustpoint_cas=[root.cert], trustpool=[], at=AT,
                  trustpoint_crl_optional=False, trustpool_crl_optional=False, crls=None).source == "trustpoint"
    with_cdp = pki.issue("leaf2", "router2.example", root, ext=ROUTER_EXT, cdp=server.url("/root.crl"))
    refused("crl-unavailable", leaf=with_cdp.cert, trustpoint_cas=[root.cert], trustpoint_crl_optional=False)
    assert server.hits == []


def test_non_http_cdp_fails_closed(pki, cache):
    root = pki.issue("root", "Root CA")
    leaf = pki.issue("leaf", "router1.example", root, ext=ROUTER_EXT, cdp="ldap://ldap.example/cn=Root")
    e = refused("crl-unavailable", leaf=leaf.cert, trustpoint_cas=[root.cert], trustpoint_crl_optional=False,
                crls=cache)
    assert "ldap://ldap.example/cn=Root is not an http URL" in e.message


# --- the CRL cache on its own ------------------------------------------------------------

def test_cache_pem_crl_and_issuer_checks(pki, server, cache):
    root = pki.issue("root", "Root CA")
    server.files["/pem.crl"] = pki.crl(root, "root", pem=True)
    crl = cache.get(server.url("/pem.crl"), root.cert, AT)
    assert crl.issuer == root.cert.subject
    # Same name, other key: the signature does not verify.
    impostor = pki.issue("impostor", "Root CA")
    server.files["/bad.crl"] = pki.crl(impostor, "impostor")
    with pytest.raises(CrlError) as e:
        cache.get(server.url("/bad.crl"), root.cert, AT)
    assert e.value.code == "crl-invalid"
    assert "bad signature" in e.value.message
    # A CRL of another CA.
    other = pki.issue("other", "Other CA")
    server.files["/other.crl"] = pki.crl(other, "other")
    with pytest.raises(CrlError) as e:
        cache.get(server.url("/other.crl"), root.cert, AT)
    assert e.value.code == "crl-invalid"
    assert e.value.message == (f"CRL from {server.url('/other.crl')} is issued by CN=Other CA, "
                               "not by CN=Root CA")
    # A CRL cached for one CA is not handed out for another.
    with pytest.raises(CrlError) as e:
        cache.get(server.url("/pem.crl"), other.cert, AT)
    assert e.value.code == "crl-invalid"


def test_cache_garbage_missing_and_oversized(pki, server, tmp_path):
    root = pki.issue("root", "Root CA")
    cache = CrlCache(tmp_path / "crls", timeout=5.0, max_size=4096)
    server.files["/junk.crl"] = b"this is not a CRL"
    server.files["/big.crl"] = b"\x30" * 5000
    cases = {"/junk.crl": ("crl-invalid", "is neither DER nor PEM"),
             "/missing.crl": ("crl-unavailable", "HTTP 404"),
             "/big.crl": ("crl-unavailable", "over 4096")}
    for path, (code, words) in cases.items():
        with pytest.raises(CrlError) as e:
            cache.get(server.url(path), root.cert, AT)
        assert (e.value.code, words in e.value.message) == (code, True), e.value.message
    with pytest.raises(CrlError) as e:
        cache.get("file:///etc/passwd", root.cert, AT)
    assert e.value.code == "crl-unavailable"
    assert not (tmp_path / "crls").exists()     # nothing bad was saved


def test_cache_injected_fetch_and_corrupt_file(pki, tmp_path):
    root = pki.issue("root", "Root CA")
    der = pki.crl(root, "root")
    calls = []

    def fetch(url, timeout, max_size):
        calls.append((url, timeout, max_size))
        return der

    cache = CrlCache(tmp_path / "crls", fetch=fetch, timeout=3.0, max_size=10000)
    url = "http://crl.example/root.crl"
    cache.get(url, root.cert, AT)
    assert calls == [(url, 3.0, 10000)]
    # A corrupt cache file is ignored and replaced by a fresh download.
    cache.path_for(url).write_bytes(b"\x30\x00garbage")
    CrlCache(tmp_path / "crls", fetch=fetch).get(url, root.cert, AT)
    assert len(calls) == 2
    assert cache.path_for(url).read_bytes() == der

    def failing(url, timeout, max_size):
        raise ConnectionResetError("peer reset")

    with pytest.raises(CrlError) as e:
        CrlCache(tmp_path / "other", fetch=failing).get(url, root.cert, AT)
    assert (e.value.code, e.value.message) == ("crl-unavailable", f"CRL download from {url} failed: peer reset")


def test_http_get_refuses_redirect_off_http():
    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(302)
            target = "file:///etc/passwd" if self.path == "/file.crl" else "https://127.0.0.1:1/x.crl"
            self.send_header("Location", target)
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        with pytest.raises(CrlError) as e:
            crlmod.http_get(f"{base}/x.crl", 5.0, 1000)
        assert e.value.code == "crl-unavailable"
        assert e.value.message == f"redirect from {base}/x.crl to a non-http URL refused"
        # urllib itself refuses file: targets; still crl-unavailable.
        with pytest.raises(CrlError) as e:
            crlmod.http_get(f"{base}/file.crl", 5.0, 1000)
        assert e.value.code == "crl-unavailable"
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(timeout=5)


def test_time_is_pinned_not_read(pki, server, served, cache):
    # At a time before the CRL's nextUpdate the cached copy stays valid, whatever today is.
    root, inter, leaf = served
    check(leaf, inter, root, cache)
    at = AT + timedelta(days=29)
    verify(leaf.cert, intermediates=[inter.cert], trustpoint_cas=[root.cert], trustpool=[], at=at,
           trustpoint_crl_optional=False, trustpool_crl_optional=True, crls=cache)
    assert len(server.hits) == 2
