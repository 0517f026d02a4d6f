"""PKI end to end over SSH with ncclient: key pairs, trustpoint configuration, CA
authentication and enrollment (self, terminal and SCEP against Debian's scepserver),
certificate import, clearing, the trust pool, path validation with CRLs and expiry alerts.
Certificates the device makes are checked with the openssl CLI; CAs, CRLs and bundles the
device reads are made by it."""
from __future__ import annotations

import functools
import http.server
import json
import subprocess
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree
from ncclient.operations import RPCError

from conftest import KEEP_ADMIN, NC, ServerProcess, rpc
from openssl_ca import lazily_broken
from scep_server import ScepServer
from test_scep import FakeScep

ACT = "http://cisco.com/ns/yang/Cisco-IOS-XR-crypto-act"
CFG = "http://cisco.com/ns/yang/Cisco-IOS-XR-um-crypto-cfg"
CEPKI = "http://cisco.com/ns/yang/Cisco-IOS-XR-crypto-cepki-oper"
NEW = "http://cisco.com/ns/yang/Cisco-IOS-XR-crypto-cepki-new-oper"
PKI = "urn:trustplane:yang:trustplane-pki"
DEV = "urn:trustplane:yang:trustplane-device"
NCEV = "urn:ietf:params:xml:ns:netconf:notification:1.0"


def call(m, xml: str) -> etree._Element:
    return etree.fromstring(rpc(m, xml).xml.encode())


def act(m, op: str, body: str = "", extra: str = "") -> etree._Element:
    return call(m, f'<{op} xmlns="{ACT}">{body}{extra}</{op}>')


def error_of(exc: RPCError) -> tuple[str, str | None]:
    app = exc.xml.find(f"{{{NC}}}error-app-tag")
    return exc.tag, app.text if app is not None else None


def fails(fn, *args) -> tuple[str, str | None, str]:
    with pytest.raises(RPCError) as info:
        fn(*args)
    tag, app = error_of(info.value)
    return tag, app, info.value.message or ""


def edit(m, body: str) -> None:
    rpc(m, f'<edit-config xmlns="{NC}"><target><running/></target><config>{body}</config></edit-config>')


def trustpoint_cfg(name: str, inner: str) -> str:
    return (f'<crypto xmlns="{CFG}"><ca><trustpoint><trustpoints><trustpoint><trustpoint-name>{name}</trustpoint-name>'
            f"{inner}</trustpoint></trustpoints></trustpoint></ca></crypto>")


def trustpoints(m) -> dict[str, etree._Element]:
    data = m.get(("subtree", f'<crypto-certificate-authority xmlns="{CEPKI}"/>')).data_ele
    return {t.findtext(f"{{{CEPKI}}}name"): t for t in data.iter(f"{{{CEPKI}}}trustpoint")}


def pem_of(tp: etree._Element, which: str) -> str:
    return tp.find(f"{{{CEPKI}}}{which}").findtext(f"{{{CEPKI}}}certificate-data")


def openssl(*args: str, cwd: Path | None = None, check: bool = True, input: bytes | None = None):
    out = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, input=input)
    if check:
        assert out.returncode == 0, out.stderr.decode()
    return out


def fingerprint(pem_path: Path, alg: str = "-sha1") -> str:
    text = openssl("x509", "-in", str(pem_path), "-noout", "-fingerprint", alg).stdout.decode()
    return text.strip().split("=", 1)[1].replace(":", "")


CA_EXT = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"


class OpensslCA:
    """A CA made with the openssl CLI: it signs CSRs, revokes and publishes CRLs."""

    def __init__(self, d: Path, cn: str, *, days: int = 3650, start: str | None = None, end: str | None = None,
                 cdp: str | None = None):
        self.d = d
        d.mkdir(parents=True)
        (d / "index.txt").write_text("")
        (d / "serial").write_text("1000\n")
        (d / "crlnumber").write_text("01\n")
        (d / "new").mkdir()
        (d / "ca.ext").write_text(CA_EXT)
        leaf_ext = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        if cdp:
            leaf_ext += f"crlDistributionPoints=URI:{cdp}\n"
        (d / "leaf.ext").write_text(leaf_ext)
        (d / "ca.cnf").write_text(
            "[ca]\ndefault_ca=c\n[c]\ndir=" + str(d) + "\ndatabase=$dir/index.txt\nnew_certs_dir=$dir/new\n"
            "serial=$dir/serial\ncrlnumber=$dir/crlnumber\ndefault_md=sha256\npolicy=p\nunique_subject=no\n"
            "default_crl_days=30\ncopy_extensions=none\n[p]\ncommonName=supplied\n")
        openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(d / "ca.key"))
        openssl("req", "-new", "-key", str(d / "ca.key"), "-subj", f"/CN={cn}/O=Lab", "-out", str(d / "ca.csr"))
        dates = ["-startdate", start, "-enddate", end] if start else ["-days", str(days)]
        openssl("ca", "-batch", "-config", str(d / "ca.cnf"), "-selfsign", "-keyfile", str(d / "ca.key"),
                "-in", str(d / "ca.csr"), "-extfile", str(d / "ca.ext"), "-out", str(d / "ca.pem"), "-notext",
                "-subj", f"/CN={cn}/O=Lab", *dates)
        self.pem = (d / "ca.pem").read_text()

    def sign(self, csr: Path, out: Path, cn: str | None = None) -> Path:
        args = ["-subj", f"/CN={cn}"] if cn else []
        openssl("ca", "-batch", "-config", str(self.d / "ca.cnf"), "-cert", str(self.d / "ca.pem"), "-keyfile",
                str(self.d / "ca.key"), "-in", str(csr), "-extfile", str(self.d / "leaf.ext"), "-out", str(out),
                "-notext", "-days", "365", *args)
        return out

    def leaf(self, name: str) -> Path:
        key, csr = self.d / f"{name}.key", self.d / f"{name}.csr"
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(key))
        openssl("req", "-new", "-key", str(key), "-subj", f"/CN={name}", "-out", str(csr))
        return self.sign(csr, self.d / f"{name}.pem")

    def revoke(self, cert: Path) -> None:
        openssl("ca", "-config", str(self.d / "ca.cnf"), "-cert", str(self.d / "ca.pem"), "-keyfile",
                str(self.d / "ca.key"), "-revoke", str(cert))

    def crl(self, out: Path) -> None:
        openssl("ca", "-config", str(self.d / "ca.cnf"), "-cert", str(self.d / "ca.pem"), "-keyfile",
                str(self.d / "ca.key"), "-gencrl", "-out", str(out))


class Files:
    """A loopback HTTP server for CRLs and CA bundles."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        handler = functools.partial(_Quiet, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def files(tmp_path):
    f = Files(tmp_path / "www")
    yield f
    f.close()


@pytest.fixture(scope="module")
def pki_server(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("pki") / "state").start()
    yield srv
    srv.stop()


@pytest.fixture
def m(pki_server):
    with pki_server.connect() as mgr:
        rpc(mgr, f'<copy-config xmlns="{NC}"><target><running/></target>'
                 f"<source><config>{KEEP_ADMIN}</config></source></copy-config>")
        yield mgr


def disk(server: ServerProcess) -> Path:
    return server.state_dir / "fs" / "disk0:"


def pki_state(server: ServerProcess) -> bytes:
    path = server.state_dir / "pki" / "state.json"
    return path.read_bytes() if path.exists() else b""


# -- keys

def keys(m) -> dict[str, dict[str, etree._Element]]:
    data = m.get(("subtree", f'<crypto-cepki xmlns="{NEW}"/>')).data_ele
    out: dict[str, dict[str, etree._Element]] = {}
    for kind, tag, key in (("rsa", "rsa-key", "rsa-key-name"), ("p256", "nistp256-key", "key-name"),
                           ("p384", "nistp384-key", "key-name"), ("auth", "auth-ssh-key", "authentication-key-name")):
        out[kind] = {e.findtext(f"{{{NEW}}}{key}"): e for e in data.iter(f"{{{NEW}}}{tag}")}
    out["ed25519"] = {e.findtext(f"{{{PKI}}}key-name"): e for e in data.iter(f"{{{PKI}}}ed25519-key")}
    return out


def test_key_generation_and_mypubkey(m, pki_server):
    out = act(m, "key-generate-rsa", "<key-label>mykey</key-label><key-modulus>2048</key-modulus>")
    key = out.find(f".//{{{PKI}}}key")
    assert key.findtext(f"{{{PKI}}}key-type") == "RSA General purpose"
    assert key.findtext(f"{{{PKI}}}key-size") == "2048"
    act(m, "key-generate-rsa-usage-keys", "<key-label>ukey</key-label><key-modulus>2048</key-modulus>")
    act(m, "key-generate-ecdsa", "<key-modulus>nistp256</key-modulus><key-label>ec1</key-label>")
    act(m, "key-generate-ecdsa", "<key-modulus>nistp384</key-modulus><key-label>ec1</key-label>")
    act(m, "key-generate-ed25519", "<key-label>ed1</key-label>")
    k = keys(m)
    rsa = k["rsa"]["mykey"]
    data = rsa.findtext(f"{{{NEW}}}key-data")
    # the seed's layout: SubjectPublicKeyInfo DER, 8 hex digits a group, 8 groups a line
    assert data.split("\n")[0] == "30820122 300D0609 2A864886 F70D0101 01050003 82010F00 3082010A 02820101"
    assert rsa.findtext(f"{{{NEW}}}key-size") == "2048"
    assert set(k["rsa"]) >= {"ukey (signature)", "ukey (encryption)"}
    assert k["rsa"]["ukey (signature)"].findtext(f"{{{NEW}}}key-type") == "RSA Usage (signature)"
    assert "ec1" in k["p256"] and "ec1" in k["p384"]
    assert k["ed25519"]["ed1"].findtext(f"{{{PKI}}}key-size") == "256"
    # no private key material anywhere in state or log
    text = etree.tostring(m.get().data_ele).decode()
    assert "PRIVATE KEY" not in text and "PRIVATE KEY" not in pki_server.log()
    keyfiles = list((pki_server.state_dir / "pki" / "keys").glob("*.pem"))
    assert keyfiles and all(p.stat().st_mode & 0o777 == 0o600 for p in keyfiles)

    # zeroize one curve's key; the other curve's key of the same label stays
    act(m, "key-zeroize-ecdsa", "<key-modulus>nistp256</key-modulus><key-label>ec1</key-label>")
    k = keys(m)
    assert "ec1" not in k["p256"] and "ec1" in k["p384"]
    assert fails(act, m, "key-zeroize-ed25519", "<key-label>nope</key-label>")[:2] == ("data-missing", "key-not-found")


def test_weak_keys_are_refused(m, pki_server):
    before = keys(m)
    tag, app, msg = fails(act, m, "key-generate-rsa", "<key-label>weak</key-label><key-modulus>1024</key-modulus>")
    assert (tag, app) == ("invalid-value", "weak-key") and "2048" in msg
    tag, app, _ = fails(act, m, "key-generate-dsa", "<key-modulus>1024</key-modulus><key-label>d</key-label>")
    assert (tag, app) == ("invalid-value", "weak-key")
    assert fails(act, m, "key-generate-rsa-general-keys", "<key-modulus>512</key-modulus>")[1] == "weak-key"
    assert {k: set(v) for k, v in keys(m).items()} == {k: set(v) for k, v in before.items()}


def test_import_authentication_key(m, pki_server, tmp_path):
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(tmp_path / "u.key"))
    openssl("pkey", "-in", str(tmp_path / "u.key"), "-pubout", "-out", str(disk(pki_server) / "user.pub"))
    act(m, "key-import-authentication-rsa", "<path>disk0:/user.pub</path><key-num>second</key-num>")
    auth = keys(m)["auth"]
    assert auth["second"].findtext(f"{{{NEW}}}key-size") == "2048"
    act(m, "key-zeroize-authentication-rsa", "<key-num>second</key-num>")
    assert "second" not in keys(m)["auth"]
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024", "-out", str(tmp_path / "w.key"))
    openssl("pkey", "-in", str(tmp_path / "w.key"), "-pubout", "-out", str(disk(pki_server) / "weak.pub"))
    assert fails(act, m, "key-import-authentication-rsa", "<path>disk0:/weak.pub</path>")[1] == "weak-key"


# -- configuration checks

def test_trustpoint_config_is_validated(m, pki_server):
    tag, app, _ = fails(edit, m, trustpoint_cfg("badtp", "<rsakeypair>no-such-key</rsakeypair>"))
    assert (tag, app) == ("invalid-value", "key-not-found")
    with pytest.raises(RPCError) as info:
        edit(m, trustpoint_cfg("badtp", "<rsakeypair>no-such-key</rsakeypair>"))
    path = info.value.xml.findtext(f"{{{NC}}}error-path")
    assert "trustpoint-name='badtp'" in path and path.endswith("rsakeypair")
    assert fails(edit, m, trustpoint_cfg("badtp", "<message-digest>sha1</message-digest>"))[1] == "weak-digest"
    assert fails(edit, m, trustpoint_cfg("badtp", "<enrollment><url>ftp://ca/x</url></enrollment>"))[1] == \
        "enrollment-url-invalid"
    # range checks come from the model
    assert fails(edit, m, trustpoint_cfg("badtp", "<enrollment><retry><period>61</period></retry></enrollment>"))[0] \
        == "invalid-value"
    assert "badtp" not in trustpoints(m)


def test_trustpoint_names_and_crl_timeout_as_the_ios_xr_model_types_them(m, pki_server, tmp_path):
    """Cisco-ios-xr-string allows spaces in a trustpoint name; crl/curl-timeout is 5..300."""
    ca = OpensslCA(tmp_path / "spaced", "Spaced Root")
    (disk(pki_server) / "spaced.pem").write_text(ca.pem)
    edit(m, trustpoint_cfg("lab ca", "<enrollment><terminal/></enrollment>"))
    act(m, "ca-authenticate", "<server-name>lab ca</server-name><file-path>disk0:/spaced.pem</file-path>")
    assert "Spaced Root" in trustpoints(m)["lab ca"].find(f"{{{CEPKI}}}certificate-authority-certificate") \
        .findtext(f"{{{CEPKI}}}issuer")
    assert fails(edit, m, trustpoint_cfg("bad/name", ""))[0] == "invalid-value"
    crl = f'<crypto xmlns="{CFG}"><ca><crl><curl-timeout>{{}}</curl-timeout></crl></ca></crypto>'
    for bad in (4, 301):
        assert fails(edit, m, crl.format(bad))[0] == "invalid-value"
    edit(m, crl.format(300))
    edit(m, f'<crypto xmlns="{CFG}" xmlns:nc="{NC}"><ca><crl nc:operation="delete"/></ca></crypto>')


def test_unknown_trustpoint(m):
    for op in ("ca-authenticate", "ca-enroll", "ca-clear-certificates", "ca-cancel-enroll"):
        tag, app, _ = fails(act, m, op, "<server-name>nowhere</server-name>")
        assert (tag, app) == ("invalid-value", "unknown-trustpoint")


# -- enrollment url self: the system trustpoint (seed: Crosswork Trust Insights)

SYSTEM_TP = (f'<crypto xmlns="{CFG}"><ca><trustpoint><system-trustpoint>'
             "<enrollment><self/></enrollment>"
             "<keypair><rsa>system-enroll-key</rsa></keypair><ca-keypair><rsa>system-root-key</rsa></ca-keypair>"
             "<subject-name>CN=lab1-ads,C=US,ST=CA,L=San Jose,O=cisco systems,OU=ASR</subject-name>"
             "<subject-name-ca-certificate>CN=lab1-ca,C=US,ST=CA,L=San Jose,O=cisco systems,OU=ASR"
             "</subject-name-ca-certificate>"
             "<lifetime><ca-certificate>367</ca-certificate><certificate>300</certificate></lifetime>"
             "<key-usage><ca-certificate><digitalsignature>true</digitalsignature><keycertsign>true</keycertsign>"
             "<crlsign>true</crlsign></ca-certificate><certificate><digitalsignature/><keyagreement/>"
             "<dataencipherment/></certificate></key-usage>"
             "<message-digest>sha256</message-digest><ip-address><ipv4-address>10.1.1.1</ipv4-address></ip-address>"
             "<query><url>ldap://ca.example.com</url></query><description>Trust Insights</description>"
             "</system-trustpoint></trustpoint></ca></crypto>"
             f'<device xmlns="{DEV}"><system><hostname>ios</hostname><domain-name>cisco.com</domain-name>'
             "</system></device>")


def test_system_trustpoint_self_enrollment(m, pki_server, tmp_path):
    act(m, "key-generate-rsa", "<key-label>system-root-key</key-label><key-modulus>2048</key-modulus>")
    act(m, "key-generate-rsa", "<key-label>system-enroll-key</key-label><key-modulus>2048</key-modulus>")
    edit(m, SYSTEM_TP)
    assert trustpoints(m)["system-trustpoint"].findtext(f"{{{PKI}}}enrollment-state") == "not-authenticated"
    assert fails(act, m, "ca-enroll", "<server-name>system-trustpoint</server-name>")[1] == "ca-not-authenticated"
    out = act(m, "ca-authenticate", "<server-name>system-trustpoint</server-name>")
    root_sha1 = out.find(f".//{{{PKI}}}ca-certificate").findtext(f"{{{PKI}}}sha1-fingerprint")
    out = act(m, "ca-enroll", "<server-name>system-trustpoint</server-name>",
              f'<include-serial-number xmlns="{PKI}">true</include-serial-number>')
    assert out.findtext(f"{{{PKI}}}status") == "issued"
    tp = trustpoints(m)["system-trustpoint"]
    assert tp.findtext(f"{{{PKI}}}enrollment-state") == "enrolled"
    assert tp.findtext(f"{{{PKI}}}router-certificate-status") == "available"
    (tmp_path / "root.pem").write_text(pem_of(tp, "certificate-authority-certificate"))
    (tmp_path / "leaf.pem").write_text(pem_of(tp, "router-certificate"))
    assert fingerprint(tmp_path / "root.pem") == root_sha1
    assert tp.find(f"{{{CEPKI}}}certificate-authority-certificate").findtext(f"{{{CEPKI}}}finger-print") == root_sha1
    # openssl accepts the chain
    assert b"leaf.pem: OK" in openssl("verify", "-CAfile", "root.pem", "leaf.pem", cwd=tmp_path).stdout
    root = openssl("x509", "-in", str(tmp_path / "root.pem"), "-noout", "-text", "-nameopt", "RFC2253").stdout.decode()
    leaf = openssl("x509", "-in", str(tmp_path / "leaf.pem"), "-noout", "-text", "-nameopt", "RFC2253").stdout.decode()
    assert "CA:TRUE" in root and "Digital Signature, Certificate Sign, CRL Sign" in root
    assert "Digital Signature, Data Encipherment, Key Agreement" in leaf and "CA:FALSE" in leaf
    assert "CN=lab1-ads" in leaf and "unstructuredName=ios.cisco.com" in leaf
    assert "unstructuredAddress=10.1.1.1" in leaf and "unstructuredAddress" not in root
    serial = json.loads((pki_server.state_dir / "device.json").read_text())["chassis"]["serial-number"]
    assert f"serialNumber={serial}" in leaf
    assert "CN=lab1-ca" in root
    dates = [openssl("x509", "-in", str(tmp_path / p), "-noout", "-enddate", "-startdate").stdout.decode()
             for p in ("root.pem", "leaf.pem")]

    def days(text):
        d = dict(line.split("=", 1) for line in text.strip().splitlines())
        fmt = "%b %d %H:%M:%S %Y %Z"
        return (datetime.strptime(" ".join(d["notAfter"].split()), fmt)
                - datetime.strptime(" ".join(d["notBefore"].split()), fmt)).days
    assert [days(t) for t in dates] == [367, 300]
    assert "sha256WithRSAEncryption" in leaf

    # enrolling twice is refused; zeroizing the key makes the certificate unusable
    assert fails(act, m, "ca-enroll", "<server-name>system-trustpoint</server-name>")[1] == "already-enrolled"
    act(m, "key-generate-rsa", "<key-label>system-enroll-key</key-label><key-modulus>2048</key-modulus>")
    assert trustpoints(m)["system-trustpoint"].findtext(f"{{{PKI}}}router-certificate-status") == "unusable"
    # the seed's regenerate workflow: clear, authenticate, enroll
    act(m, "ca-clear-certificates", "<server-name>system-trustpoint</server-name>")
    tp = trustpoints(m)["system-trustpoint"]
    assert tp.findtext(f"{{{PKI}}}enrollment-state") == "not-authenticated"
    assert tp.find(f"{{{CEPKI}}}router-certificate") is None
    act(m, "ca-authenticate", "<server-name>system-trustpoint</server-name>")
    act(m, "ca-enroll", "<server-name>system-trustpoint</server-name>")
    tp = trustpoints(m)["system-trustpoint"]
    assert tp.findtext(f"{{{PKI}}}router-certificate-status") == "available"
    (tmp_path / "leaf2.pem").write_text(pem_of(tp, "router-certificate"))
    (tmp_path / "root2.pem").write_text(pem_of(tp, "certificate-authority-certificate"))
    assert b"OK" in openssl("verify", "-CAfile", "root2.pem", "leaf2.pem", cwd=tmp_path).stdout
    act(m, "key-zeroize-rsa", "<key-label>system-enroll-key</key-label>")
    assert trustpoints(m)["system-trustpoint"].findtext(f"{{{PKI}}}router-certificate-status") == "unusable"


def test_self_enrollment_with_ecdsa_and_ed25519_keys(m, pki_server, tmp_path):
    act(m, "key-generate-ecdsa", "<key-modulus>nistp384</key-modulus><key-label>root384</key-label>")
    act(m, "key-generate-ed25519", "<key-label>leaf-ed</key-label>")
    edit(m, f'<crypto xmlns="{CFG}"><ca><trustpoint><system-trustpoint><enrollment><url>self</url></enrollment>'
            "<keypair><ed25519>leaf-ed</ed25519></keypair><ca-keypair><ecdsanistp384>root384</ecdsanistp384>"
            "</ca-keypair><message-digest>sha384</message-digest></system-trustpoint></trustpoint></ca></crypto>")
    act(m, "ca-clear-certificates", "<server-name>system-trustpoint</server-name>")
    act(m, "ca-authenticate", "<server-name>system-trustpoint</server-name>")
    act(m, "ca-enroll", "<server-name>system-trustpoint</server-name>")
    tp = trustpoints(m)["system-trustpoint"]
    (tmp_path / "r.pem").write_text(pem_of(tp, "certificate-authority-certificate"))
    (tmp_path / "l.pem").write_text(pem_of(tp, "router-certificate"))
    assert b"OK" in openssl("verify", "-CAfile", "r.pem", "l.pem", cwd=tmp_path).stdout
    assert "ecdsa-with-SHA384" in openssl("x509", "-in", str(tmp_path / "l.pem"), "-noout", "-text").stdout.decode()
    act(m, "ca-clear-certificates", "<server-name>system-trustpoint</server-name>")


# -- enrollment terminal

def test_terminal_enrollment(m, pki_server, tmp_path):
    ca = OpensslCA(tmp_path / "ca", "Terminal Root")
    other = OpensslCA(tmp_path / "other", "Other Root")
    (disk(pki_server) / "myca.pem").write_text(ca.pem)
    act(m, "key-generate-rsa", "<key-label>termkey</key-label><key-modulus>2048</key-modulus>")
    edit(m, trustpoint_cfg("myca", "<enrollment><terminal/></enrollment><rsakeypair>termkey</rsakeypair>"
                                   "<subject-name>CN=myrouter,O=Example</subject-name><crl><optional/></crl>"))
    before = pki_state(pki_server)
    assert fails(act, m, "ca-enroll", "<server-name>myca</server-name>")[1] == "ca-not-authenticated"
    assert fails(act, m, "ca-authenticate", "<server-name>myca</server-name>")[1] == "file-path-required"
    tag, app, msg = fails(act, m, "ca-authenticate", "<server-name>myca</server-name><file-path>disk0:/myca.pem"
                          "</file-path>", f'<expected-fingerprint xmlns="{PKI}">{"AB" * 20}</expected-fingerprint>')
    assert app == "fingerprint-mismatch" and "AB" * 20 in msg
    assert pki_state(pki_server) == before
    assert trustpoints(m)["myca"].findtext(f"{{{PKI}}}enrollment-state") == "not-authenticated"

    sha256 = fingerprint(tmp_path / "ca" / "ca.pem", "-sha256")
    colons = ":".join(sha256[i:i + 2] for i in range(0, 64, 2)).lower()
    out = act(m, "ca-authenticate", "<server-name>myca</server-name><file-path>disk0:/myca.pem</file-path>",
              f'<expected-fingerprint xmlns="{PKI}">{colons}</expected-fingerprint>')
    assert out.find(f".//{{{PKI}}}ca-certificate").findtext(f"{{{PKI}}}sha256-fingerprint") == sha256
    assert fails(act, m, "ca-authenticate", "<server-name>myca</server-name><file-path>disk0:/myca.pem"
                 "</file-path>")[1] == "ca-already-authenticated"

    out = act(m, "ca-enroll", "<server-name>myca</server-name><file-path>disk0:/myca.csr</file-path>",
              f'<challenge-password xmlns="{PKI}">revoke-me</challenge-password>')
    assert out.findtext(f"{{{PKI}}}status") == "request-written"
    csr_text = out.find(f"{{{PKI}}}request").findtext(f"{{{PKI}}}csr")
    assert (disk(pki_server) / "myca.csr").read_text() == csr_text
    req = openssl("req", "-in", str(disk(pki_server) / "myca.csr"), "-noout", "-verify", "-text").stdout.decode()
    assert "challengePassword" in req and "revoke-me" in req and "CN=myrouter" in req.replace(" = ", "=")
    assert trustpoints(m)["myca"].findtext(f"{{{PKI}}}enrollment-state") == "request-written"

    # a certificate for another key, and one from another CA, are refused
    stranger = ca.leaf("stranger")
    (disk(pki_server) / "stranger.pem").write_bytes(stranger.read_bytes())
    before = pki_state(pki_server)
    tag, app, _ = fails(act, m, "ca-import-certificate", "<server-name>myca</server-name>"
                                                         "<file-path>disk0:/stranger.pem</file-path>")
    assert (tag, app) == ("invalid-value", "cert-key-mismatch")
    other.sign(disk(pki_server) / "myca.csr", disk(pki_server) / "other.pem")
    assert fails(act, m, "ca-import-certificate", "<server-name>myca</server-name>"
                 "<file-path>disk0:/other.pem</file-path>")[1] == "cert-untrusted"
    assert pki_state(pki_server) == before

    issued = ca.sign(disk(pki_server) / "myca.csr", tmp_path / "issued.pem")
    out = act(m, "ca-import-certificate", "<server-name>myca</server-name>",
              f'<certificate xmlns="{PKI}">{issued.read_text()}</certificate>')
    assert out.findtext(f"{{{PKI}}}usage") == "general"
    tp = trustpoints(m)["myca"]
    assert tp.findtext(f"{{{PKI}}}enrollment-state") == "enrolled"
    (tmp_path / "router.pem").write_text(pem_of(tp, "router-certificate"))
    assert b"OK" in openssl("verify", "-CAfile", str(tmp_path / "ca" / "ca.pem"), "router.pem", cwd=tmp_path).stdout


def test_expired_ca_is_refused(m, pki_server, tmp_path):
    ca = OpensslCA(tmp_path / "old", "Old Root", start="20100101000000Z", end="20150101000000Z")
    (disk(pki_server) / "old.pem").write_text(ca.pem)
    edit(m, trustpoint_cfg("oldca", "<enrollment><terminal/></enrollment>"))
    before = pki_state(pki_server)
    tag, app, msg = fails(act, m, "ca-authenticate", "<server-name>oldca</server-name>"
                                                     "<file-path>disk0:/old.pem</file-path>")
    assert app == "ca-expired" and "2015-01-01" in msg
    assert pki_state(pki_server) == before


# -- SCEP against Debian's scepserver

@pytest.fixture(scope="module")
def scep_ca(tmp_path_factory):
    with ScepServer(tmp_path_factory.mktemp("scep"), "s3cret") as srv:
        yield srv


def test_scep_enrollment(m, pki_server, scep_ca, tmp_path):
    act(m, "key-generate-rsa", "<key-label>scepkey</key-label><key-modulus>2048</key-modulus>")
    edit(m, trustpoint_cfg("scep", f"<enrollment><url>{scep_ca.url}</url><retry><count>2</count></retry></enrollment>"
                                   "<rsakeypair>scepkey</rsakeypair><subject-name>CN=r1,O=Example</subject-name>"
                                   "<vrf>mgmt</vrf>"))
    ca_pem = Path(scep_ca.ca_pem) if not isinstance(scep_ca.ca_pem, Path) else scep_ca.ca_pem
    want = fingerprint(ca_pem)
    assert fails(act, m, "ca-authenticate", "<server-name>scep</server-name>",
                 f'<expected-fingerprint xmlns="{PKI}">{"00" * 20}</expected-fingerprint>')[1] == "fingerprint-mismatch"
    out = act(m, "ca-authenticate", "<server-name>scep</server-name>",
              f'<expected-fingerprint xmlns="{PKI}">{want}</expected-fingerprint>')
    assert out.find(f".//{{{PKI}}}ca-certificate").findtext(f"{{{PKI}}}sha1-fingerprint") == want
    assert out.findall(f"{{{PKI}}}capability")

    before = pki_state(pki_server)
    tag, app, msg = fails(act, m, "ca-enroll", "<server-name>scep</server-name>",
                          f'<challenge-password xmlns="{PKI}">wrong</challenge-password>')
    assert app == "scep-failed", msg
    assert pki_state(pki_server) == before
    out = act(m, "ca-enroll", "<server-name>scep</server-name>",
              f'<challenge-password xmlns="{PKI}">s3cret</challenge-password>')
    assert out.findtext(f"{{{PKI}}}status") == "issued"
    tp = trustpoints(m)["scep"]
    (tmp_path / "r.pem").write_text(pem_of(tp, "router-certificate"))
    assert b"OK" in openssl("verify", "-CAfile", str(ca_pem), "r.pem", cwd=tmp_path).stdout
    assert "CN=r1" in tp.find(f"{{{CEPKI}}}router-certificate").findtext(f"{{{CEPKI}}}subject")
    assert "s3cret" not in pki_server.log()


def test_scep_needs_an_rsa_key(m, pki_server, scep_ca):
    act(m, "key-generate-ecdsa", "<key-modulus>nistp256</key-modulus><key-label>scep-ec</key-label>")
    edit(m, trustpoint_cfg("scep-ec", f"<enrollment><url>{scep_ca.url}</url></enrollment>"
                                      f'<keypair xmlns="{PKI}"><ecdsanistp256>scep-ec</ecdsanistp256></keypair>'))
    act(m, "ca-authenticate", "<server-name>scep-ec</server-name>")
    assert fails(act, m, "ca-enroll", "<server-name>scep-ec</server-name>",
                 f'<challenge-password xmlns="{PKI}">s3cret</challenge-password>')[1] == "scep-key-unsupported"


def wait_state(m, name: str, want: str, seconds: float) -> str:
    state = None
    for _ in range(int(seconds * 4)):
        state = trustpoints(m)[name].findtext(f"{{{PKI}}}enrollment-state")
        if state == want:
            break
        threading.Event().wait(0.25)
    return state


@pytest.fixture
def fast_clock(tmp_path):
    """A device whose clock, and timers, run 60 times as fast: a minute is a second."""
    srv = ServerProcess(tmp_path / "state", "--clock-rate", "60").start()
    try:
        with srv.connect() as mgr:
            yield mgr
    finally:
        srv.stop()


def test_scep_pending_poll_and_cancel(fast_clock):
    """A CA that answers PENDING: the device polls with CertPoll after the retry period (one
    minute of device time, the shortest) and installs what it gets; a cancelled enrollment is
    never polled."""
    m = fast_clock
    act(m, "key-generate-rsa", "<key-label>pendkey</key-label><key-modulus>2048</key-modulus>")
    with FakeScep() as ca:
        for name in ("pend", "pendcancel"):
            edit(m, trustpoint_cfg(name, f"<enrollment><url>{ca.url}</url><retry><period>1</period><count>2</count>"
                                         "</retry></enrollment><rsakeypair>pendkey</rsakeypair>"
                                         f"<subject-name>CN={name}</subject-name>"))
            act(m, "ca-authenticate", f"<server-name>{name}</server-name>")
        ca.plan = [lambda req: ca.reply(req, "3")]
        out = act(m, "ca-enroll", "<server-name>pendcancel</server-name>")
        assert out.findtext(f"{{{PKI}}}status") == "pending"
        assert trustpoints(m)["pendcancel"].findtext(f"{{{PKI}}}enrollment-state") == "pending"
        assert fails(act, m, "ca-enroll", "<server-name>pendcancel</server-name>")[1] == "enrollment-pending"
        act(m, "ca-cancel-enroll", "<server-name>pendcancel</server-name>")
        assert trustpoints(m)["pendcancel"].findtext(f"{{{PKI}}}enrollment-state") == "authenticated"

        ca.plan = [lambda req: ca.reply(req, "3"),
                   lambda req: ca.reply(req, "0", certs=[ca.ca_cert, ca.issue()])]
        out = act(m, "ca-enroll", "<server-name>pend</server-name>")
        assert out.findtext(f"{{{PKI}}}status") == "pending"
        tx = out.findtext(f"{{{PKI}}}transaction-id")
        assert wait_state(m, "pend", "enrolled", 30) == "enrolled"
        assert [r.message_type for r in ca.requests] == ["19", "19", "20"]  # PKCSReq, PKCSReq, CertPoll
        assert ca.requests[2].transaction_id == tx
        assert "CN=pend" in trustpoints(m)["pend"].find(f"{{{CEPKI}}}router-certificate").findtext(
            f"{{{CEPKI}}}subject")
        assert trustpoints(m)["pendcancel"].findtext(f"{{{PKI}}}enrollment-state") == "authenticated"


# -- trust pool and path validation

def pool(m) -> etree._Element:
    return m.get(("subtree", f'<pki xmlns="{PKI}"/>')).data_ele.find(f".//{{{PKI}}}trustpool")


def test_trustpool_import_and_clean(m, pki_server, tmp_path, files):
    a = OpensslCA(tmp_path / "a", "Pool A")
    b = OpensslCA(tmp_path / "b", "Pool B")
    openssl("crl2pkcs7", "-nocrl", "-certfile", str(tmp_path / "a" / "ca.pem"), "-certfile",
            str(tmp_path / "b" / "ca.pem"), "-outform", "DER", "-out", str(disk(pki_server) / "bundle.p7b"))
    builtin = int(pool(m).findtext(f"{{{PKI}}}built-in-active"))
    out = act(m, "ca-trustpool-import-url", "<url>disk0:/bundle.p7b</url>")
    assert out.findtext(f"{{{PKI}}}downloaded") == "2"
    p = pool(m)
    assert p.findtext(f"{{{PKI}}}source") == "disk0:/bundle.p7b"
    fps = {c.findtext(f"{{{PKI}}}sha1-fingerprint"): c for c in p.iter(f"{{{PKI}}}certificate")}
    assert fps[fingerprint(tmp_path / "a" / "ca.pem")].findtext(f"{{{PKI}}}origin") == "downloaded"

    # concatenated PEM over http replaces the pool as a unit
    (files.root / "pool.pem").write_text(b.pem + "\n" + a.pem)
    (files.root / "garbage.pem").write_text("not a bundle")
    out = act(m, "ca-trustpool-import-url", f"<url>{files.url}/pool.pem</url>")
    assert out.findtext(f"{{{PKI}}}downloaded") == "2"
    before = pki_state(pki_server)
    tag, app, _ = fails(act, m, "ca-trustpool-import-url", f"<url>{files.url}/garbage.pem</url>")
    assert (tag, app) == ("invalid-value", "trustpool-bundle-invalid")
    assert fails(act, m, "ca-trustpool-import-url", f"<url>{files.url}/missing.pem</url>")[1] == \
        "trustpool-download-failed"
    assert pki_state(pki_server) == before

    # a downloaded certificate with a built-in one's subject makes the built-in inactive
    builtin_pem = (pki_server.state_dir / "pki" / "trustpool-builtin.pem").read_text()
    first = builtin_pem.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    (tmp_path / "b0.pem").write_text(first)
    subject = openssl("x509", "-in", str(tmp_path / "b0.pem"), "-noout", "-subject", "-nameopt", "compat"
                      ).stdout.decode().strip().split("=", 1)[1].strip()
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
            str(tmp_path / "twin.key"), "-subj", subject, "-days", "30", "-out", str(disk(pki_server) / "twin.pem"),
            "-addext", "basicConstraints=critical,CA:TRUE")
    out = act(m, "ca-trustpool-import-url-clean", "<url>disk0:/twin.pem</url>")
    assert out.findtext(f"{{{PKI}}}built-in-inactive") == "1"
    assert out.findtext(f"{{{PKI}}}built-in-active") == str(builtin - 1)
    fps = {c.findtext(f"{{{PKI}}}sha1-fingerprint"): c for c in pool(m).iter(f"{{{PKI}}}certificate")}
    assert fps[fingerprint(tmp_path / "b0.pem")].findtext(f"{{{PKI}}}active") == "false"
    out = act(m, "ca-trustpool-import-url-clean")
    assert out.findtext(f"{{{PKI}}}downloaded") == "0" and out.findtext(f"{{{PKI}}}built-in-inactive") == "0"


def verify(m, pem: str) -> etree._Element:
    return call(m, f'<verify-certificate xmlns="{PKI}"><certificate>{pem}</certificate></verify-certificate>')


def test_path_validation_precedence_and_crls(m, pki_server, tmp_path, files):
    ca = OpensslCA(tmp_path / "crlca", "CRL Root", cdp=f"{files.url}/root.crl")
    good, bad = ca.leaf("good"), ca.leaf("bad")
    ca.revoke(bad)
    (disk(pki_server) / "crlca.pem").write_text(ca.pem)
    edit(m, trustpoint_cfg("crltp", "<enrollment><terminal/></enrollment>"))
    act(m, "ca-authenticate", "<server-name>crltp</server-name><file-path>disk0:/crlca.pem</file-path>")
    # no CRL published yet: fail closed
    assert fails(verify, m, good.read_text())[1] == "crl-unavailable"
    ca.crl(files.root / "root.crl")
    out = verify(m, good.read_text())
    assert out.findtext(f"{{{PKI}}}trusted-by") == "crltp"
    assert len(out.findall(f"{{{PKI}}}chain")) == 2
    tag, app, msg = fails(verify, m, bad.read_text())
    assert app == "cert-revoked" and "bad" in msg
    # crl optional: an unreachable CDP no longer blocks
    (files.root / "root.crl").unlink()
    edit(m, trustpoint_cfg("crltp", "<crl><optional/></crl>"))
    assert verify(m, good.read_text()).findtext(f"{{{PKI}}}trusted-by") == "crltp"
    # the same CA only in the pool: the pool's policy applies
    act(m, "ca-clear-certificates", "<server-name>crltp</server-name>")
    assert fails(verify, m, good.read_text())[1] == "cert-untrusted"
    edit(m, f'<crypto xmlns="{CFG}"><ca><trustpool><policy><crl><optional/></crl></policy></trustpool></ca></crypto>')
    (disk(pki_server) / "pool.pem").write_text(ca.pem)
    act(m, "ca-trustpool-import-url", "<url>disk0:/pool.pem</url>")
    assert verify(m, good.read_text()).findtext(f"{{{PKI}}}trusted-by") == "trustpool"
    act(m, "ca-trustpool-import-url-clean")


@pytest.mark.parametrize("how", ["name", "extension"])
def test_certificates_that_fail_when_read_are_invalid(m, pki_server, tmp_path, files, how):
    ca = OpensslCA(tmp_path / f"lazy-{how}", "Lazy Root")
    bad = lazily_broken(x509.load_pem_x509_certificate(ca.pem.encode()), how).public_bytes(Encoding.PEM).decode()
    assert fails(verify, m, bad)[:2] == ("invalid-value", "certificate-invalid")
    (disk(pki_server) / f"lazy-{how}.pem").write_text(bad)
    edit(m, trustpoint_cfg(f"lazy{how}", "<enrollment><terminal/></enrollment>"))
    assert fails(act, m, "ca-authenticate", f"<server-name>lazy{how}</server-name>"
                 f"<file-path>disk0:/lazy-{how}.pem</file-path>")[1] == "certificate-invalid"
    assert trustpoints(m)[f"lazy{how}"].find(f"{{{CEPKI}}}certificate-authority-certificate") is None
    (files.root / f"lazy-{how}.pem").write_text(bad + ca.pem)
    before = pool(m)
    assert fails(act, m, "ca-trustpool-import-url", f"<url>{files.url}/lazy-{how}.pem</url>")[1] == \
        "trustpool-bundle-invalid"
    assert etree.tostring(pool(m)) == etree.tostring(before)


def test_crl_request(m, pki_server, tmp_path, files):
    ca = OpensslCA(tmp_path / "crlreq", "CRL Request Root")
    ca.crl(files.root / "req.crl")
    assert fails(act, m, "ca-crl-request", f"<uri>{files.url}/req.crl</uri>")[1] == "crl-issuer-unknown"
    (disk(pki_server) / "crlreq.pem").write_text(ca.pem)
    edit(m, trustpoint_cfg("crlreq", "<enrollment><terminal/></enrollment>"))
    act(m, "ca-authenticate", "<server-name>crlreq</server-name><file-path>disk0:/crlreq.pem</file-path>")
    out = act(m, "ca-crl-request", f"<uri>{files.url}/req.crl</uri>")
    crl = out.findtext(f"{{{ACT}}}certificate")
    assert crl.startswith("-----BEGIN X509 CRL-----")
    assert "CRL Request Root" in openssl("crl", "-noout", "-issuer", input=crl.encode()).stdout.decode()
    assert fails(act, m, "ca-crl-request", f"<uri>{files.url}/none.crl</uri>")[1] == "crl-unavailable"


# -- expiry alerts, with a pinned clock

def notifications(m, since: datetime) -> list[etree._Element]:
    """The certificate-expiring notifications replayed since `since` (event times are the host's
    time, not the pinned device clock)."""
    m.create_subscription(start_time=since.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    out = []
    while True:
        n = m.take_notification(timeout=3)
        if n is None:
            break
        ev = etree.fromstring(n.notification_xml.encode())
        found = ev.find(f".//{{{PKI}}}certificate-expiring")
        if found is not None:
            out.append(found)
    return out


def test_expiry_alerts(tmp_path):
    t0 = datetime(2030, 1, 1, tzinfo=timezone.utc)
    started = datetime.now(timezone.utc)
    srv = ServerProcess(tmp_path / "state", "--clock", t0.strftime("%Y-%m-%dT%H:%M:%SZ")).start()
    try:
        with srv.connect() as m:
            act(m, "key-generate-ecdsa", "<key-modulus>nistp256</key-modulus><key-label>system-root-key</key-label>")
            act(m, "key-generate-ecdsa", "<key-modulus>nistp256</key-modulus><key-label>system-enroll-key</key-label>")
            edit(m, f'<crypto xmlns="{CFG}"><ca><trustpoint><system-trustpoint><enrollment><self/></enrollment>'
                    "<keypair><ecdsanistp256>system-enroll-key</ecdsanistp256></keypair><ca-keypair><ecdsanistp256>"
                    "system-root-key</ecdsanistp256></ca-keypair><subject-name>CN=check</subject-name>"
                    "<lifetime><certificate>30</certificate><ca-certificate>400</ca-certificate></lifetime>"
                    "</system-trustpoint></trustpoint></ca></crypto>")
            act(m, "ca-authenticate", "<server-name>system-trustpoint</server-name>")
            act(m, "ca-enroll", "<server-name>system-trustpoint</server-name>")
            got = notifications(m, started)
        assert len(got) == 1
        n = got[0]
        assert n.findtext(f"{{{PKI}}}level") == "warning"
        assert n.findtext(f"{{{PKI}}}certificate-type") == "id"
        assert n.findtext(f"{{{PKI}}}trustpoint") == "system-trustpoint"
        assert "CN=check" in n.findtext(f"{{{PKI}}}subject")
        assert int(n.findtext(f"{{{PKI}}}time-left")) > 29 * 86400
        assert "%SECURITY-CEPKI-4-CERT_EXPIRING_WARNING" in srv.log()
        srv.stop()
        # 24 days later: within a week, one alert-level notification (raised once, not again at restart)
        later = t0 + timedelta(days=24, hours=1)
        restarted = datetime.now(timezone.utc)
        srv = ServerProcess(tmp_path / "state", "--clock", later.strftime("%Y-%m-%dT%H:%M:%SZ")).start()
        with srv.connect() as m:
            got = notifications(m, restarted)
        assert [n.findtext(f"{{{PKI}}}level") for n in got] == ["alert"]
        line = [ln for ln in srv.log().splitlines() if "CERT_EXPIRING_ALERT" in ln][-1]
        assert ("%SECURITY-CEPKI-1-CERT_EXPIRING_ALERT : Certificate expiring WITHIN A WEEK. Trustpoint Name= "
                "system-trustpoint, Certificate Type= ID, Serial Number= ") in line
        # 30 days from the first start's enrollment, less 24 days and 1 hour: each device clock ran on
        # for the seconds its server took, so the time left is 5 days 23 hours give or take a minute
        left = int(got[0].findtext(f"{{{PKI}}}time-left"))
        assert abs(left - (5 * 86400 + 23 * 3600)) < 60
        days, rest = divmod(left, 86400)
        assert (f"Time Left= {days} days, {rest // 3600} hours, {rest % 3600 // 60} minutes, "
                f"{rest % 60} seconds") in line
        srv.stop()
        restarted = datetime.now(timezone.utc)
        srv = ServerProcess(tmp_path / "state", "--clock", (later + timedelta(minutes=10)).strftime(
            "%Y-%m-%dT%H:%M:%SZ")).start()
        with srv.connect() as m:
            assert notifications(m, restarted) == []
    finally:
        srv.stop()


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_trustpool_automatic_update(tmp_path, files):
    """The built-in pool's earliest expiry sets the timer: 20 days before it the device loads the
    cabundle url (seed schedule)."""
    t0 = datetime(2030, 1, 1, tzinfo=timezone.utc)
    state = tmp_path / "state"
    (state / "pki").mkdir(parents=True)
    soon = OpensslCA(tmp_path / "soon", "Soon Root", start="20290101000000Z", end="20300201000000Z")
    (state / "pki" / "trustpool-builtin.pem").write_text(soon.pem)
    fresh = OpensslCA(tmp_path / "fresh", "Fresh Root", start="20290101000000Z", end="20400101000000Z")
    (files.root / "bundle.pem").write_text(fresh.pem)
    srv = ServerProcess(state, "--clock", t0.strftime("%Y-%m-%dT%H:%M:%SZ")).start()
    try:
        with srv.connect() as m:
            assert when(pool(m).findtext(f"{{{PKI}}}next-update-attempt")) == datetime(2030, 1, 12, tzinfo=timezone.utc)
            edit(m, f'<crypto xmlns="{CFG}"><ca><trustpool><policy><cabundle><url>{files.url}/bundle.pem</url>'
                    "</cabundle></policy></trustpool></ca></crypto>")
            assert pool(m).findtext(f"{{{PKI}}}downloaded") == "0"
        srv.stop()
        srv = ServerProcess(state, "--clock", "2030-01-12T00:00:05Z").start()
        with srv.connect() as m:
            for _ in range(50):
                p = pool(m)
                if p.findtext(f"{{{PKI}}}downloaded") == "1":
                    break
                threading.Event().wait(0.1)
            assert p.findtext(f"{{{PKI}}}source") == f"{files.url}/bundle.pem"
            # the built-in certificate still expires first: the next attempt follows the schedule
            assert when(p.findtext(f"{{{PKI}}}next-update-attempt")) == datetime(2030, 1, 17, tzinfo=timezone.utc)
    finally:
        srv.stop()


def test_usage_keys_terminal_enrollment(m, pki_server, tmp_path):
    """Usage keys give two requests and take two imports (seed: enter crypto ca import twice)."""
    ca = OpensslCA(tmp_path / "uca", "Usage Root")
    (disk(pki_server) / "uca.pem").write_text(ca.pem)
    act(m, "key-generate-rsa-usage-keys", "<key-label>ukeys</key-label><key-modulus>2048</key-modulus>")
    edit(m, trustpoint_cfg("usage", "<enrollment><terminal/></enrollment><rsakeypair>ukeys</rsakeypair>"
                                    "<subject-name>CN=u1</subject-name><crl><optional/></crl>"))
    assert fails(act, m, "ca-cancel-enroll", "<server-name>usage</server-name>")[:2] == \
        ("data-missing", "no-pending-enrollment")
    act(m, "ca-authenticate", "<server-name>usage</server-name><file-path>disk0:/uca.pem</file-path>")
    out = act(m, "ca-enroll", "<server-name>usage</server-name><file-path>disk0:/usage.csr</file-path>")
    requests = {r.findtext(f"{{{PKI}}}usage"): r.findtext(f"{{{PKI}}}file-path") for r in out.iter(f"{{{PKI}}}request")}
    assert requests == {"signature": "disk0:/usage.csr.signature", "encryption": "disk0:/usage.csr.encryption"}
    for usage in ("encryption", "signature"):
        cert = ca.sign(disk(pki_server) / f"usage.csr.{usage}", tmp_path / f"{usage}.pem")
        out = act(m, "ca-import-certificate", "<server-name>usage</server-name>",
                  f'<certificate xmlns="{PKI}">{cert.read_text()}</certificate>')
        assert out.findtext(f"{{{PKI}}}usage") == usage
    tp = trustpoints(m)["usage"]
    assert tp.find(f"{{{CEPKI}}}router-signature-certificate") is not None
    assert tp.find(f"{{{CEPKI}}}router-encryption-certificate") is not None
    assert tp.findtext(f"{{{PKI}}}enrollment-state") == "enrolled"
