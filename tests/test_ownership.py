"""Device ownership end to end: lab vouchers and owner certificates made by
`trustplane lab`, uploaded to the device filesystem, installed over NETCONF, read back,
cleared with a consent token; plus the real IOS XR vouchers in ../shared/interop."""
from __future__ import annotations

import gzip
import io
import json
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from lxml import etree
import zstandard
from ncclient.operations import RPCError

from backends.engine import cms
from backends.engine.onboarding import ownership
from trustplane import lab_artifacts
from backends.engine.onboarding.identity import cert_pem, key_pem, key_usage, load_cert_pem, load_key_pem, make_root_ca
from conftest import PASSWORD, ROOT, ServerProcess, rpc
from diskfull import FILLER, small_tmpfs
from rpms import build_rpm, export_public, make_gpg_key, xz_claiming_a_big_dictionary

ACT = "http://cisco.com/ns/yang/Cisco-IOS-XR-ownership-act"
OPER = "http://cisco.com/ns/yang/Cisco-IOS-XR-ownership-oper"
KPKG = "http://cisco.com/ns/yang/Cisco-IOS-XR-key-package-act"
TPO = "urn:trustplane:yang:trustplane-ownership"
CEPKI = "http://cisco.com/ns/yang/Cisco-IOS-XR-crypto-cepki-oper"
INTEROP = ROOT.parent / "shared" / "interop" / "cisco-ov"


def tp(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "trustplane.cli", *args], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, TRUSTPLANE_ADMIN_PASSWORD=PASSWORD))
    assert out.returncode == 0, out.stderr
    return out.stdout


def call(m, xml: str) -> etree._Element:
    return etree.fromstring(rpc(m, xml).xml.encode())


def apply(m, ov: str, oc: str, extra: str = "") -> etree._Element:
    return call(m, f'<oshp-ovoc-apply xmlns="{ACT}"><ov-path>{ov}</ov-path><oc-path>{oc}</oc-path>{extra}'
                   "</oshp-ovoc-apply>")


def error_of(exc: RPCError) -> tuple[str, str]:
    app = exc.xml.find("{urn:ietf:params:xml:ns:netconf:base:1.0}error-app-tag")
    return exc.tag, app.text if app is not None else None


def nodes(m) -> dict[str, etree._Element]:
    data = m.get(("subtree", f'<ownership xmlns="{TPO}"/>')).data_ele
    return {n.findtext(f"{{{TPO}}}location"): n for n in data.iter(f"{{{TPO}}}node")}


class Lab:
    """A device state directory and the lab artifacts for it."""

    def __init__(self, base: Path, clock: str | None = None, nodes: tuple[str, ...] = ()):
        self.base = base
        self.state = base / "state"
        self.lab = base / "state-lab"
        self.work = base / "work"
        tp("init", "--state-dir", str(self.state), *(a for n in nodes for a in ("--node", n)))
        profile = json.loads((self.state / "device.json").read_text())
        self.serials = {n["location"]: n["serial-number"] for n in profile["nodes"]}
        self.disk = self.state / "fs" / "disk0:"
        tp("lab", "owner-ca", "--out", str(self.work / "owner"))
        tp("lab", "owner-cert", "--pdc-dir", str(self.work / "owner"))
        shutil.copy(self.work / "owner" / "oc.cms", self.disk / "oc.cms")
        self.server = ServerProcess(self.state, *(["--clock", clock] if clock else []))

    def vouchers(self, name: str, serials: list[str], *opts: str) -> list[Path]:
        out = self.work / name
        tp("lab", "voucher", "--lab-dir", str(self.lab), "--pdc", str(self.work / "owner" / "pdc.pem"),
           *[a for s in serials for a in ("--serial", s)], "--out", str(out), *opts)
        return [out / (s.replace("/", "_") + ".vcj") for s in serials]  # as `lab voucher` names them

    def bundle(self, name: str, files: list[Path]) -> str:
        tp("lab", "bundle", "--out", str(self.disk / name), *map(str, files))
        return f"disk0:/{name}"

    def signed_by(self, name: str, key, cert, chain, serials: list[str]) -> str:
        """A bundle of vouchers for serials signed by key and cert, made now."""
        pdc = load_cert_pem((self.work / "owner" / "pdc.pem").read_bytes())
        now = datetime.now(timezone.utc)
        data = lab_artifacts.bundle([(f"{s}.vcj", lab_artifacts.make_voucher(key, cert, chain, s, pdc, now))
                                     for s in serials])
        (self.disk / name).write_bytes(data)
        return f"disk0:/{name}"

    def state_bytes(self) -> bytes:
        p = self.state / "ownership" / "state.json"
        return p.read_bytes() if p.exists() else b""


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("own"))
    lab.server.start()
    yield lab
    lab.server.stop()


def test_lab_artifacts_verify_with_openssl(dev):
    rp0 = dev.vouchers("openssl", [dev.serials["0/RP0/CPU0"]])[0]
    out = subprocess.run(["openssl", "cms", "-verify", "-inform", "DER", "-in", str(rp0), "-binary", "-purpose", "any",
                          "-CAfile", str(dev.lab / "masa-root.pem")], capture_output=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["ietf-voucher:voucher"]["serial-number"] == dev.serials["0/RP0/CPU0"]
    certs = subprocess.run(["openssl", "pkcs7", "-inform", "DER", "-in", str(dev.work / "owner" / "oc.cms"),
                            "-print_certs"], capture_output=True, text=True, check=True).stdout
    assert "Lab Owner Certificate" in certs and "Lab Owner Root" in certs
    out = subprocess.run(["openssl", "verify", "-CAfile", str(dev.work / "owner" / "pdc.pem"),
                          str(dev.work / "owner" / "oc.pem")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_establish_ownership(dev):
    rp0, rp1 = dev.serials["0/RP0/CPU0"], dev.serials["0/RP1/CPU0"]
    files = dev.vouchers("v1", [rp0, rp1, "FOC2231X0ZZ"])
    ov = dev.bundle("ov.tar.gz", files)
    with dev.server.connect() as m:
        m.create_subscription(stream_name="NETCONF", filter=("subtree", f'<ownership-established xmlns="{TPO}"/>'))
        reply = apply(m, ov, "disk0:/oc.cms")
        rows = {v.findtext(f"{{{TPO}}}member"): v.findtext(f"{{{TPO}}}result")
                for v in reply.iter(f"{{{TPO}}}voucher")}
        assert rows == {f"{rp0}.vcj": "applied", f"{rp1}.vcj": "applied", "FOC2231X0ZZ.vcj": "other-device"}
        note = m.take_notification(timeout=10)
        locs = [e.text for e in note.notification_ele.iter(f"{{{TPO}}}location")]
        assert locs == ["0/RP0/CPU0", "0/RP1/CPU0"]
        state = nodes(m)
        for loc in ("0/RP0/CPU0", "0/RP1/CPU0"):
            n = state[loc]
            assert n.findtext(f"{{{TPO}}}state") == "established"
            assert n.findtext(f"{{{TPO}}}voucher/{{{TPO}}}serial-number") == dev.serials[loc]
            assert n.findtext(f"{{{TPO}}}voucher/{{{TPO}}}assertion") == "logged"
            assert n.findtext(f"{{{TPO}}}voucher/{{{TPO}}}content-type") == "id-data"
            assert n.findtext(f"{{{TPO}}}installed-by") == "admin"
            chain = n.findall(f"{{{TPO}}}owner-certificate-chain")
            assert [c.findtext(f"{{{TPO}}}subject") for c in chain] == [
                "CN=Lab Owner Certificate,O=Lab Owner", "CN=trustplane Lab Owner Root,O=Lab Owner"]
        oper = m.get(("subtree", f'<ownership xmlns="{OPER}"/>')).data_ele
        pdc = oper.findtext(f".//{{{OPER}}}pdc")
        assert pdc == (dev.work / "owner" / "pdc.pem").read_text()
        assert "Lab Owner Certificate" in oper.findtext(f".//{{{OPER}}}oc-info")
        tp_ = m.get(("subtree", f'<crypto-certificate-authority xmlns="{CEPKI}"/>')).data_ele
        trustpoint = tp_.find(f".//{{{CEPKI}}}trustpoint")
        assert trustpoint.findtext(f"{{{CEPKI}}}name") == "device_ownership"
        ca = trustpoint.find(f"{{{CEPKI}}}certificate-authority-certificate")
        assert ca.findtext(f"{{{CEPKI}}}certificate-data") == pdc
        sha1 = subprocess.run(["openssl", "x509", "-in", str(dev.work / "owner" / "pdc.pem"), "-noout",
                               "-fingerprint", "-sha1"], capture_output=True, text=True, check=True).stdout
        assert ca.findtext(f"{{{CEPKI}}}finger-print") == sha1.strip().split("=")[1].replace(":", "")
        held = [e.text for e in trustpoint.findall(f"{{{TPO}}}ca-certificate-data")]
        assert held[0] == pdc and "Lab Owner Certificate" in subprocess.run(
            ["openssl", "x509", "-noout", "-subject"], input=held[1], capture_output=True, text=True).stdout
    assert "%SECURITY-OWNERSHIP-6-INFO : Device ownership established." in dev.server.log()
    # state survives a restart
    dev.server.stop()
    dev.server.start()
    with dev.server.connect() as m:
        assert nodes(m)["0/RP1/CPU0"].findtext(f"{{{TPO}}}state") == "established"


def refused(dev, ov: str, oc: str, want: tuple[str, str], extra: str = "") -> None:
    before = dev.state_bytes()
    with dev.server.connect() as m:
        with pytest.raises(RPCError) as err:
            apply(m, ov, oc, extra)
    assert error_of(err.value) == want, err.value.message
    assert dev.state_bytes() == before
    assert f"device ownership not established from {ov}: {want[1]}: " in dev.server.log()


def test_failures_change_nothing(dev, tmp_path):
    rp0, rp1 = dev.serials["0/RP0/CPU0"], dev.serials["0/RP1/CPU0"]
    both = [rp0, rp1]
    refused(dev, dev.bundle("foreign.tar.gz", dev.vouchers("foreign", ["FOC2231X0ZZ"])), "disk0:/oc.cms",
            ("invalid-value", "ov-serial-mismatch"))
    expired = dev.vouchers("expired", both, "--created", "2020-01-01T00:00:00Z", "--expires-days", "30")
    refused(dev, dev.bundle("expired.tar.gz", expired), "disk0:/oc.cms", ("operation-failed", "ov-expired"))
    # a voucher signed by another manufacturer's MASA
    other = Lab(tmp_path / "other")
    untrusted = [p for s in both for p in [other.work / "u" / f"{s}.vcj"]]
    tp("lab", "voucher", "--lab-dir", str(other.lab), "--pdc", str(dev.work / "owner" / "pdc.pem"),
       "--serial", rp0, "--serial", rp1, "--out", str(other.work / "u"))
    refused(dev, dev.bundle("untrusted.tar.gz", untrusted), "disk0:/oc.cms", ("operation-failed", "ov-signer-untrusted"))
    # an OC from another owner
    shutil.copy(other.work / "owner" / "oc.cms", dev.disk / "other-oc.cms")
    good = dev.bundle("good.tar.gz", dev.vouchers("good", both))
    refused(dev, good, "disk0:/other-oc.cms", ("operation-failed", "oc-untrusted"))
    # tampered voucher
    data = bytearray(dev.vouchers("tamper", both)[0].read_bytes())
    at = bytes(data).index(b"logged")
    data[at:at + 6] = b"LOGGED"
    tampered = dev.work / "tamper" / f"{rp0}.vcj"
    tampered.write_bytes(bytes(data))
    refused(dev, dev.bundle("tampered.tar.gz", [tampered, dev.work / "tamper" / f"{rp1}.vcj"]), "disk0:/oc.cms",
            ("operation-failed", "ov-signature-invalid"))
    # signed by the trusted MASA, but its JSON is UTF-16 where RFC 8259 allows only UTF-8
    utf8 = dev.work / "good" / f"{rp1}.vcj"
    utf16 = dev.work / "utf16" / f"{rp1}.vcj"
    utf16.parent.mkdir()
    utf16.write_bytes(cms.sign(cms.load(utf8.read_bytes()).content.decode().encode("utf-16"),
                               load_key_pem((dev.lab / "masa.key").read_bytes()),
                               load_cert_pem((dev.lab / "masa.pem").read_bytes()),
                               chain=[load_cert_pem((dev.lab / "masa-root.pem").read_bytes())]))
    refused(dev, dev.bundle("utf16.tar.gz", [dev.work / "good" / f"{rp0}.vcj", utf16]), "disk0:/oc.cms",
            ("operation-failed", "ov-malformed"))
    refused(dev, dev.bundle("rp0-only.tar.gz", [dev.work / "good" / f"{rp0}.vcj"]), "disk0:/oc.cms",
            ("invalid-value", "ov-missing-node"))
    # older than the installed voucher
    with dev.server.connect() as m:
        apply(m, good, "disk0:/oc.cms")
    older = dev.vouchers("older", both, "--created", "2026-01-01T00:00:00Z", "--expires-days", "3000")
    refused(dev, dev.bundle("older.tar.gz", older), "disk0:/oc.cms", ("operation-failed", "ov-older"))
    refused(dev, "disk0:/../device.json", "disk0:/oc.cms", ("invalid-value", "path-escape"))
    refused(dev, good, "disk0:/missing.cms", ("data-missing", "file-not-found"))
    (dev.disk / "corrupt.tar.gz").write_bytes(b"\x1f\x8b\x08\x00" + os.urandom(300))
    refused(dev, "disk0:/corrupt.tar.gz", "disk0:/oc.cms", ("invalid-value", "ov-bundle-corrupt"))
    strict = dev.vouchers("strict", [rp0], "--security-profile", "strict")
    relaxed = dev.vouchers("relaxed", [rp1], "--security-profile", "relaxed")
    mixed = dev.bundle("mixed.tar.gz", strict + relaxed)
    refused(dev, mixed, "disk0:/oc.cms", ("operation-failed", "ov-profile-mismatch"))
    with dev.server.connect() as m:
        apply(m, mixed, "disk0:/oc.cms", f'<allow-mixed-security-profiles xmlns="{TPO}">true'
                                         "</allow-mixed-security-profiles>")
        oper = m.get(("subtree", f'<ownership xmlns="{OPER}"><security-profile/></ownership>')).data_ele
        assert oper.findtext(f".//{{{OPER}}}signed-rpm") == "enable"  # strict wins


def tar_of(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def zeros_tar() -> bytes:
    return tar_of([(f"v{i}.vcj", bytes(ownership.MAX_MEMBER)) for i in range(300)])  # 75 MiB of members


@pytest.mark.parametrize("pack", [lambda t: gzip.compress(t, 1), lambda t: lzma.compress(t, preset=0),
                                  zstandard.compress], ids=["gzip", "xz", "zstd"])
def test_a_bundle_is_bounded_as_it_decompresses(zeros_tar, pack):
    with pytest.raises(ownership.OwnershipError) as err:
        list(ownership.read_bundle(pack(zeros_tar), "bomb.tar"))
    assert (err.value.code, err.value.message) == (
        "ov-bundle-too-large", f"bomb.tar: the data is over {ownership.MAX_BUNDLE} bytes decompressed")


def test_bundle_decoders_and_members_that_are_refused(tmp_path):
    xz = bytearray(lzma.compress(tar_of([("a.vcj", b"x")])))
    xz_claiming_a_big_dictionary(xz, 0)
    with pytest.raises(ownership.OwnershipError) as err:
        list(ownership.read_bundle(bytes(xz), "dict.tar.xz"))
    assert (err.value.code, err.value.message) == (
        "ov-bundle-too-large", "dict.tar.xz: the xz data needs more than 134217728 bytes of memory to decompress")
    # a pax header or a GNU long name is read whole: a large one is refused before it is read
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
            info = tarfile.TarInfo("v/" * 40_000 + "a.vcj")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
        with pytest.raises(ownership.OwnershipError) as err:
            list(ownership.read_bundle(gzip.compress(buf.getvalue()), "long.tar.gz"))
        assert err.value.code == "ov-bundle-too-large"
        assert err.value.message.startswith("long.tar.gz: a tar header extension of 8")
        assert err.value.message.endswith(" bytes is over 65536 bytes")
    # a GNU sparse member: its map, not its size, says what it expands to
    with open(tmp_path / "s.vcj", "wb") as f:
        f.truncate(200_000)
    subprocess.run(["tar", "--sparse", "--format=gnu", "-cf", "s.tar", "s.vcj"], cwd=tmp_path, check=True)
    with pytest.raises(ownership.OwnershipError) as err:
        list(ownership.read_bundle((tmp_path / "s.tar").read_bytes(), "s.tar"))
    assert (err.value.code, err.value.message) == ("ov-bundle-corrupt", "s.tar: s.vcj is not a regular file")


def test_a_decompression_bomb_is_refused_over_netconf(dev, zeros_tar):
    (dev.disk / "bomb.tar.gz").write_bytes(gzip.compress(zeros_tar, 9))
    refused(dev, "disk0:/bomb.tar.gz", "disk0:/oc.cms", ("invalid-value", "ov-bundle-too-large"))


def test_a_full_or_read_only_disk_changes_no_ownership(tmp_path):
    lab = Lab(tmp_path)
    rp0, rp1 = lab.serials["0/RP0/CPU0"], lab.serials["0/RP1/CPU0"]
    ov = lab.bundle("ov.tar.gz", lab.vouchers("v", [rp0, rp1]))
    with small_tmpfs(lab.state / "ownership", "1m") as disk:
        lab.server.start()
        try:
            with lab.server.connect() as m:
                disk.fill()
                for fault, says in (("full", "No space left on device"), ("read-only", "Read-only file system")):
                    if fault == "read-only":
                        disk.unfill()
                        disk.remount("ro")
                    with pytest.raises(RPCError) as err:
                        apply(m, ov, "disk0:/oc.cms")
                    assert error_of(err.value) == ("operation-failed", "storage-failed")
                    assert err.value.message == f"cannot write the ownership state: {says}"
                    assert {n.findtext(f"{{{TPO}}}state") for n in nodes(m).values()} == {"none"}
                    assert sorted(os.listdir(disk.path)) == ([FILLER] if fault == "full" else [])
                disk.remount("rw")
                apply(m, ov, "disk0:/oc.cms")
                assert {n.findtext(f"{{{TPO}}}state") for n in nodes(m).values()} == {"established", "none"}
                assert nodes(m)["0/RP0/CPU0"].findtext(f"{{{TPO}}}state") == "established"
                # a consent-token response whose state write fails can be given again
                tp("lab", "consent-key", "--out", str(lab.work / "ct"))
                tp("lab", "key-package", "--pdc-dir", str(lab.work / "owner"), "--consent-key",
                   str(lab.work / "ct" / "ct.pub.pem"), "--out", str(lab.disk / "kp.cms"))
                call(m, f'<kpkg-apply xmlns="{KPKG}"><keypackage-type>customer</keypackage-type>'
                        "<keypackage-file>disk0:/kp.cms</keypackage-file></kpkg-apply>")
                c = call(m, f'<clear-device-ownership-challenge xmlns="{TPO}"><location>0/RP1/CPU0</location>'
                            "</clear-device-ownership-challenge>").findtext(f".//{{{TPO}}}challenge-string")
                r = tp("lab", "consent-response", "--key", str(lab.work / "ct" / "ct.key"), "--challenge", c).strip()
                respond = (f'<clear-device-ownership-response xmlns="{TPO}"><location>0/RP1/CPU0</location>'
                           f"<challenge-response>{r}</challenge-response></clear-device-ownership-response>")
                disk.fill()
                with pytest.raises(RPCError) as err:
                    call(m, respond)
                assert error_of(err.value) == ("operation-failed", "storage-failed")
                assert nodes(m)["0/RP1/CPU0"].findtext(f"{{{TPO}}}state") == "established"
                disk.unfill()
                call(m, respond)
                assert nodes(m)["0/RP1/CPU0"].findtext(f"{{{TPO}}}state") == "none"
        finally:
            lab.server.stop()
    assert "Traceback" not in lab.server.log()


def test_duplicate_vouchers_first_valid_applies(dev):
    rp0, rp1 = dev.serials["0/RP0/CPU0"], dev.serials["0/RP1/CPU0"]
    first = dev.vouchers("dup1", [rp0, rp1])
    second = dev.vouchers("dup2", [rp0])
    renamed = dev.work / "dup2" / "again.vcj"
    second[0].rename(renamed)
    with dev.server.connect() as m:
        reply = apply(m, dev.bundle("dup.tar.gz", first + [renamed]), "disk0:/oc.cms")
    rows = {v.findtext(f"{{{TPO}}}member"): (v.findtext(f"{{{TPO}}}result"), v.findtext(f"{{{TPO}}}reason"))
            for v in reply.iter(f"{{{TPO}}}voucher")}
    assert rows[f"{rp0}.vcj"][0] == "applied"
    assert rows["again.vcj"][0] == "rejected" and rows["again.vcj"][1].startswith("ov-duplicate")


def pem_pair(directory: Path, stem: str):
    return load_key_pem((directory / f"{stem}.key").read_bytes()), load_cert_pem((directory / f"{stem}.pem").read_bytes())


def test_only_a_masa_end_entity_signs_a_voucher(dev):
    """The four wrong signers, each refused with its own error-app-tag and nothing changed."""
    both = [dev.serials["0/RP0/CPU0"], dev.serials["0/RP1/CPU0"]]
    _maker_key, maker = pem_pair(dev.lab, "manufacturer-ca")
    root_key, root = pem_pair(dev.lab, "masa-root")
    idevid_key, idevid = pem_pair(dev.state / "idevid", "0_RP1_CPU0")
    now = datetime.now(timezone.utc) - timedelta(minutes=5)
    enc_key, enc = lab_artifacts.make_masa(root_key, root, now, usage=key_usage(key_encipherment=True))
    other_key, other = make_root_ca(now, "Another Manufacturer MASA Root")
    stranger_key, stranger = lab_artifacts.make_masa(other_key, other, now)
    cases = [("by-idevid.tar.gz", (idevid_key, idevid, maker), "ov-signer-device-identity",
              "chains to a manufacturer (device identity) anchor"),
             ("by-anchor.tar.gz", (root_key, root, root), "ov-signer-not-end-entity", "is a CA certificate"),
             ("by-keyenc.tar.gz", (enc_key, enc, root), "ov-signer-key-usage", "keyUsage without digitalSignature"),
             ("by-stranger.tar.gz", (stranger_key, stranger, other), "ov-signer-untrusted", "no path")]
    for name, signer, app_tag, fragment in cases:
        before = dev.state_bytes()
        with dev.server.connect() as m:
            with pytest.raises(RPCError) as err:
                apply(m, dev.signed_by(name, *signer, both), "disk0:/oc.cms")
        assert error_of(err.value) == ("operation-failed", app_tag)
        assert fragment in err.value.message and err.value.message.startswith("0/RP0/CPU0: "), err.value.message
        assert dev.state_bytes() == before
        # one log line with the reason
        assert dev.server.log().count(f"device ownership not established from disk0:/{name}: {app_tag}: ") == 1


def test_a_bundle_for_many_other_devices_logs_one_line(dev):
    local = dev.vouchers("many", [dev.serials["0/RP0/CPU0"], dev.serials["0/RP1/CPU0"]])
    masa_key, masa = pem_pair(dev.lab, "masa")
    _root_key, root = pem_pair(dev.lab, "masa-root")
    pdc = load_cert_pem((dev.work / "owner" / "pdc.pem").read_bytes())
    now = datetime.now(timezone.utc) - timedelta(minutes=5)
    others = [(f"OTHER{i:04d}.vcj", lab_artifacts.make_voucher(masa_key, masa, root, f"OTHER{i:04d}", pdc, now))
              for i in range(1500)]
    (dev.disk / "many.tar.gz").write_bytes(lab_artifacts.bundle([(p.name, p.read_bytes()) for p in local] + others))
    with dev.server.connect() as m:
        reply = apply(m, "disk0:/many.tar.gz", "disk0:/oc.cms")
    results = [v.findtext(f"{{{TPO}}}result") for v in reply.iter(f"{{{TPO}}}voucher")]
    assert results.count("applied") == 2 and results.count("other-device") == 1500
    log = dev.server.log()
    assert "OTHER0007" not in log
    assert log.count("device ownership: disk0:/many.tar.gz: 2 of 1502 vouchers applied, 1500 for other devices "
                     "ignored, 0 rejected\n") == 1


def test_key_package_and_clearing_with_a_consent_token(dev):
    owner = dev.work / "owner"
    tp("lab", "consent-key", "--out", str(dev.work / "ct"))
    tp("lab", "key-package", "--pdc-dir", str(owner), "--consent-key", str(dev.work / "ct" / "ct.pub.pem"),
       "--out", str(dev.disk / "kp.cms"))
    with dev.server.connect() as m:
        with pytest.raises(RPCError) as err:
            call(m, f'<clear-device-ownership-challenge xmlns="{TPO}"><location>0/RP1/CPU0</location>'
                    "</clear-device-ownership-challenge>")
        assert error_of(err.value) == ("operation-failed", "ct-key-missing")
        call(m, f'<kpkg-apply xmlns="{KPKG}"><keypackage-type>customer</keypackage-type>'
                "<keypackage-file>disk0:/kp.cms</keypackage-file></kpkg-apply>")
        with pytest.raises(RPCError) as err:  # the same package again is not newer
            call(m, f'<kpkg-apply xmlns="{KPKG}"><keypackage-type>customer</keypackage-type>'
                    "<keypackage-file>disk0:/kp.cms</keypackage-file></kpkg-apply>")
        assert error_of(err.value) == ("invalid-value", "kpkg-stale")
        kp = m.get(("subtree", f'<ownership xmlns="{TPO}"><key-package/></ownership>')).data_ele
        assert kp.findtext(f".//{{{TPO}}}usage") == "consent-token"

        def challenge(loc):
            r = call(m, f'<clear-device-ownership-challenge xmlns="{TPO}"><location>{loc}</location>'
                        "</clear-device-ownership-challenge>")
            return r.findtext(f".//{{{TPO}}}challenge-string")

        def respond(loc, response):
            call(m, f'<clear-device-ownership-response xmlns="{TPO}"><location>{loc}</location>'
                    f"<challenge-response>{response}</challenge-response></clear-device-ownership-response>")

        c0, c1 = challenge("0/RP0/CPU0"), challenge("0/RP1/CPU0")
        sign = lambda c: tp("lab", "consent-response", "--key", str(dev.work / "ct" / "ct.key"),  # noqa: E731
                            "--challenge", c).strip()
        r0, r1 = sign(c0), sign(c1)
        before = dev.state_bytes()
        with pytest.raises(RPCError) as err:
            respond("0/RP1/CPU0", r0)
        assert error_of(err.value) == ("access-denied", "ct-wrong-node")
        assert dev.state_bytes() == before
        respond("0/RP1/CPU0", r1)
        with pytest.raises(RPCError) as err:
            respond("0/RP1/CPU0", r1)
        assert error_of(err.value) == ("access-denied", "ct-response-replayed")
        state = nodes(m)
        assert state["0/RP1/CPU0"].findtext(f"{{{TPO}}}state") == "none"
        assert state["0/RP0/CPU0"].findtext(f"{{{TPO}}}state") == "established"

        # reimage protection with the same mechanism
        with pytest.raises(RPCError) as err:
            call(m, f'<oshp-reimage-protection-challenge xmlns="{ACT}"><reimage-protection>enable'
                    "</reimage-protection><signer>cisco</signer></oshp-reimage-protection-challenge>")
        assert error_of(err.value) == ("operation-not-supported", "ct-signer-unavailable")
        ch = call(m, f'<oshp-reimage-protection-challenge xmlns="{ACT}"><reimage-protection>enable'
                     "</reimage-protection><signer>customer</signer></oshp-reimage-protection-challenge>")
        call(m, f'<oshp-reimage-protection-response xmlns="{ACT}"><reimage-protection>enable</reimage-protection>'
                f"<challenge-response>{sign(ch.findtext(f'.//{{{ACT}}}challenge-string'))}</challenge-response>"
                "</oshp-reimage-protection-response>")
        oper = m.get(("subtree", f'<ownership xmlns="{OPER}"><anti-theft/></ownership>')).data_ele
        assert oper.findtext(f".//{{{OPER}}}reimage-status") == "enabled"

        respond("0/RP0/CPU0", r0)
        state = nodes(m)
        assert all(n.findtext(f"{{{TPO}}}state") == "none" for n in state.values())
        oper = m.get(("subtree", f'<ownership xmlns="{OPER}"/>')).data_ele
        assert oper.find(f".//{{{OPER}}}device-ownership") is None
        tp_ = m.get(("subtree", f'<crypto-certificate-authority xmlns="{CEPKI}"/>')).data_ele
        assert tp_.find(f".//{{{CEPKI}}}trustpoint") is None
        kp = m.get(("subtree", f'<ownership xmlns="{TPO}"><key-package/></ownership>')).data_ele
        assert kp.find(f".//{{{TPO}}}key-package") is None
        with pytest.raises(RPCError) as err:
            challenge("0/RP0/CPU0")
        assert error_of(err.value) == ("data-missing", "no-ownership")


def test_serials_of_another_vendor_through_the_whole_flow(tmp_path):
    lab = Lab(tmp_path, nodes=("0/RP0/CPU0=JN11F2A3BAFA", "0/RP1/CPU0=ab12/X 7"))
    assert lab.serials == {"0/RP0/CPU0": "JN11F2A3BAFA", "0/RP1/CPU0": "ab12/X 7"}
    ov = lab.bundle("ov.tar.gz", lab.vouchers("v", ["JN11F2A3BAFA", "ab12/X 7", "FOC2231X0ZZ"]))
    tp("lab", "consent-key", "--out", str(lab.work / "ct"))
    tp("lab", "key-package", "--pdc-dir", str(lab.work / "owner"), "--consent-key",
       str(lab.work / "ct" / "ct.pub.pem"), "--out", str(lab.disk / "kp.cms"))
    lab.server.start()
    try:
        with lab.server.connect() as m:
            reply = apply(m, ov, "disk0:/oc.cms")
            rows = {v.findtext(f"{{{TPO}}}member"): v.findtext(f"{{{TPO}}}result")
                    for v in reply.iter(f"{{{TPO}}}voucher")}
            assert rows == {"JN11F2A3BAFA.vcj": "applied", "ab12_X 7.vcj": "applied",
                            "FOC2231X0ZZ.vcj": "other-device"}
            state = nodes(m)
            assert state["0/RP1/CPU0"].findtext(f"{{{TPO}}}serial-number") == "ab12/X 7"
            assert state["0/RP1/CPU0"].findtext(f"{{{TPO}}}voucher/{{{TPO}}}serial-number") == "ab12/X 7"
            call(m, f'<kpkg-apply xmlns="{KPKG}"><keypackage-type>customer</keypackage-type>'
                    "<keypackage-file>disk0:/kp.cms</keypackage-file></kpkg-apply>")
            c = call(m, f'<clear-device-ownership-challenge xmlns="{TPO}"><location>0/RP1/CPU0</location>'
                        "</clear-device-ownership-challenge>").findtext(f".//{{{TPO}}}challenge-string")
            r = tp("lab", "consent-response", "--key", str(lab.work / "ct" / "ct.key"), "--challenge", c).strip()
            call(m, f'<clear-device-ownership-response xmlns="{TPO}"><location>0/RP1/CPU0</location>'
                    f"<challenge-response>{r}</challenge-response></clear-device-ownership-response>")
            assert nodes(m)["0/RP1/CPU0"].findtext(f"{{{TPO}}}state") == "none"
            assert nodes(m)["0/RP0/CPU0"].findtext(f"{{{TPO}}}state") == "established"
    finally:
        lab.server.stop()


def test_a_single_voucher_as_der_pem_or_base64_text_over_netconf(tmp_path):
    """One voucher file, as the lab writes it (DER) and as openssl re-encodes it (PEM, base64)."""
    lab = Lab(tmp_path, nodes=("0/RP0/CPU0=FOC2231A0AA",))
    vcj = lab.vouchers("one", ["FOC2231A0AA"])[0]
    subprocess.run(["openssl", "cms", "-cmsout", "-inform", "DER", "-in", str(vcj), "-outform", "PEM",
                    "-out", str(lab.disk / "ov.pem")], check=True)
    subprocess.run(["openssl", "base64", "-in", str(vcj), "-out", str(lab.disk / "ov.b64")], check=True)
    shutil.copy(vcj, lab.disk / "ov.vcj")
    assert (lab.disk / "ov.pem").read_bytes().startswith(b"-----BEGIN CMS-----")
    lab.server.start()
    try:
        with lab.server.connect() as m:
            for name in ("ov.pem", "ov.b64", "ov.vcj"):
                reply = apply(m, f"disk0:/{name}", "disk0:/oc.cms")
                assert [v.findtext(f"{{{TPO}}}result") for v in reply.iter(f"{{{TPO}}}voucher")] == ["applied"]
                assert nodes(m)["0/RP0/CPU0"].findtext(f"{{{TPO}}}state") == "established"
            (lab.disk / "bad.pem").write_bytes(b"-----BEGIN CMS-----\nnot base64 at all!\n-----END CMS-----\n")
            before = lab.state_bytes()
            with pytest.raises(RPCError) as err:
                apply(m, "disk0:/bad.pem", "disk0:/oc.cms")
            assert error_of(err.value) == ("operation-failed", "ov-malformed"), err.value.message
            assert lab.state_bytes() == before
    finally:
        lab.server.stop()


MIGRATED = "one-anchor-set profile rewritten with separate trust-anchor roles"
BOTH_ROLES = "is both a MASA anchor and a manufacturer anchor"


def test_an_old_state_directory_is_migrated_to_two_anchor_roles(tmp_path):
    lab = Lab(tmp_path)
    rp0, rp1 = lab.serials["0/RP0/CPU0"], lab.serials["0/RP1/CPU0"]
    # the layout before the roles were separate: one anchor set, and the lab MASA under the manufacturing CA
    profile = lab.state / "device.json"
    old = json.loads(profile.read_text())
    del old["masa-anchors"]
    profile.write_text(json.dumps(old))
    (lab.state / "anchors" / "masa-root.pem").unlink()
    maker_key, maker = pem_pair(lab.lab, "manufacturer-ca")
    now = datetime.now(timezone.utc) - timedelta(minutes=5)
    old_masa_key, old_masa = lab_artifacts.make_masa(maker_key, maker, now)
    for suffix in (".key", ".pem"):
        (lab.lab / f"masa-root{suffix}").unlink()
    (lab.lab / "masa.key").write_bytes(key_pem(old_masa_key))
    (lab.lab / "masa.pem").write_text(cert_pem(old_masa))
    old_ov = lab.signed_by("old.tar.gz", old_masa_key, old_masa, maker, [rp0, rp1])
    lab.server.start()
    try:
        with lab.server.connect() as m:
            with pytest.raises(RPCError) as err:
                apply(m, old_ov, "disk0:/oc.cms")
        assert error_of(err.value) == ("operation-failed", "ov-signer-device-identity")
    finally:
        lab.server.stop()
    log = lab.server.log()
    assert log.count(MIGRATED) == 1 and '"manufacturer-anchors" (anchors/manufacturer-ca.pem)' in log
    migrated = json.loads(profile.read_text())
    assert migrated["masa-anchors"] == [] and migrated["manufacturer-anchors"] == old["manufacturer-anchors"]
    assert {k: v for k, v in migrated.items() if k != "masa-anchors"} == old
    # the README's way on: the lab makes its MASA a root of its own, which becomes the device's MASA anchor
    out = subprocess.run([sys.executable, "-m", "trustplane.cli", "lab", "voucher", "--lab-dir", str(lab.lab), "--pdc",
                          str(lab.work / "owner" / "pdc.pem"), "--serial", rp0, "--serial", rp1, "--out",
                          str(lab.work / "new")], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and f"made the MASA root {lab.lab / 'masa-root.pem'}" in out.stderr, out.stderr
    _root_key, root = pem_pair(lab.lab, "masa-root")
    assert pem_pair(lab.lab, "masa")[1].issuer == root.subject != maker.subject
    shutil.copy(lab.lab / "masa-root.pem", lab.state / "anchors" / "masa-root.pem")
    migrated["masa-anchors"] = ["anchors/masa-root.pem"]
    profile.write_text(json.dumps(migrated))
    lab.server.start()
    try:
        with lab.server.connect() as m:
            apply(m, lab.bundle("new.tar.gz", [lab.work / "new" / f"{s}.vcj" for s in (rp0, rp1)]), "disk0:/oc.cms")
            assert {n.findtext(f"{{{TPO}}}state") for n in nodes(m).values()} == {"established", "none"}
    finally:
        lab.server.stop()
    assert lab.server.log().count(MIGRATED) == 1 and BOTH_ROLES not in lab.server.log()
    # an administrator may trust the manufacturing CA for vouchers too, and is warned at start
    migrated["masa-anchors"].append("anchors/manufacturer-ca.pem")
    profile.write_text(json.dumps(migrated))
    lab.server.start()
    try:
        with lab.server.connect() as m:
            reply = apply(m, lab.signed_by("again.tar.gz", old_masa_key, old_masa, maker, [rp0, rp1]),
                          "disk0:/oc.cms")
            assert [v.findtext(f"{{{TPO}}}result") for v in reply.iter(f"{{{TPO}}}voucher")] == ["applied"] * 2
    finally:
        lab.server.stop()
    assert lab.server.log().count("trust anchor CN=trustplane Lab Manufacturing Root CA,O=trustplane " + BOTH_ROLES) == 1


# -- the real IOS XR vouchers ------------------------------------------------------------------

@pytest.fixture(scope="module")
def cisco(tmp_path_factory):
    if not INTEROP.is_dir():
        pytest.skip("../shared/interop/cisco-ov is absent")
    base = tmp_path_factory.mktemp("cisco")
    certs = subprocess.run(["openssl", "pkcs7", "-inform", "DER", "-in", str(INTEROP / "FOC2448P0P2.ov"),
                            "-print_certs"], capture_output=True, text=True, check=True).stdout
    blocks = ["-----BEGIN CERTIFICATE-----" + b.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
              for b in certs.split("-----BEGIN CERTIFICATE-----")[1:]]
    root = None
    for pem in blocks:  # the embedded root: the certificate whose subject is its issuer
        (base / "c.pem").write_text(pem)
        subject, issuer = subprocess.run(["openssl", "x509", "-in", str(base / "c.pem"), "-noout", "-subject",
                                          "-issuer"], capture_output=True, text=True, check=True).stdout.splitlines()
        if subject.split("=", 1)[1] == issuer.split("=", 1)[1]:
            root = pem
    (base / "root.pem").write_text(root)
    state = base / "state"
    tp("init", "--state-dir", str(state), "--node", "0/RP0/CPU0=FOC2448P0P2",
       "--masa-anchor", str(base / "root.pem"))
    disk = state / "fs" / "disk0:"
    for name in ("FOC2448P0P2.ov", "wrongserial.ov"):
        shutil.copy(INTEROP / name, disk / name)
    # an owner certificate made with openssl from the PDC's key
    run = lambda *a: subprocess.run(a, check=True, capture_output=True, cwd=base)  # noqa: E731
    (base / "oc.ext").write_text("keyUsage=critical,digitalSignature\n")
    run("openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=owner.abc.ka.in", "-keyout", "oc.key",
        "-out", "oc.csr")
    (base / "ca.cnf").write_text("[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\nnew_certs_dir = .\n"
                                 "serial = serial\ndefault_md = sha256\npolicy = p\nunique_subject = no\n"
                                 "[p]\ncommonName = supplied\n")
    (base / "index.txt").write_text("")
    (base / "serial").write_text("07\n")
    run("openssl", "ca", "-batch", "-config", "ca.cnf", "-cert", str(INTEROP / "pdc.cert.pem"), "-keyfile",
        str(INTEROP / "pdc.key.pem"), "-in", "oc.csr", "-out", "oc.pem", "-startdate", "20240101000000Z",
        "-enddate", "20251231000000Z", "-extfile", "oc.ext", "-notext")
    run("openssl", "crl2pkcs7", "-nocrl", "-certfile", "oc.pem", "-outform", "DER", "-out", str(disk / "oc.cms"))
    return state


def test_cisco_voucher_with_the_clock_pinned(cisco):
    srv = ServerProcess(cisco, "--clock", "2024-06-01T00:00:00Z").start()
    try:
        with srv.connect() as m:
            with pytest.raises(RPCError) as err:
                apply(m, "disk0:/wrongserial.ov", "disk0:/oc.cms")
            assert error_of(err.value) == ("invalid-value", "ov-serial-mismatch")
            reply = apply(m, "disk0:/FOC2448P0P2.ov", "disk0:/oc.cms")
            assert reply.findtext(f".//{{{TPO}}}result") == "applied"
            n = nodes(m)["0/RP0/CPU0"]
            assert set(n.findtext(f"{{{TPO}}}voucher/{{{TPO}}}issuer").split(",")) == {
                "CN=IOS-XR-SW-CPK-OV", "OU=REL", "O=Cisco"}
            assert n.findtext(f"{{{TPO}}}voucher/{{{TPO}}}content-type") == "id-data"
            assert "CN=abc.ka.in" in n.findtext(f"{{{TPO}}}pinned-domain-cert/{{{TPO}}}subject").split(",")
            assert n.findtext(f"{{{TPO}}}owner-certificate-chain/{{{TPO}}}subject") == "CN=owner.abc.ka.in"
    finally:
        srv.stop()


def test_cisco_voucher_with_the_real_clock_is_expired(cisco):
    srv = ServerProcess(cisco).start()
    try:
        with srv.connect() as m:
            with pytest.raises(RPCError) as err:
                apply(m, "disk0:/FOC2448P0P2.ov", "disk0:/oc.cms")
            assert err.value.tag == "operation-failed"
            assert error_of(err.value)[1] in ("ov-expired", "ov-signer-expired")
            assert "expire" in err.value.message
    finally:
        srv.stop()


def test_strict_profile_requires_signed_owner_packages(tmp_path):
    lab = Lab(tmp_path / "strict")
    serials = list(lab.serials.values())
    ov = lab.bundle("strict.tar.gz", lab.vouchers("strict", serials, "--security-profile", "strict"))
    key = make_gpg_key(tmp_path / "gnupg", "Owner Packages <pkgs@owner.example>")
    (lab.work / "owner.asc").write_bytes(export_public(key))
    tp("lab", "key-package", "--pdc-dir", str(lab.work / "owner"), "--package-key", str(lab.work / "owner.asc"),
       "--out", str(lab.disk / "kp.cms"))
    pkgs = lab.state / "fs" / "harddisk:"
    unsigned = build_rpm(tmp_path, "app", {"/opt/app/x": b"x"})
    signed = build_rpm(tmp_path, "app", {"/opt/app/x": b"x"}, version="1.0.1", key=key)
    shutil.copy(unsigned, pkgs)
    shutil.copy(signed, pkgs)
    inst = "http://cisco.com/ns/yang/Cisco-IOS-XR-spirit-install-act"
    add = lambda m, rpm: call(m, f'<install-add xmlns="{inst}"><packagepath>harddisk:/{rpm.name}'  # noqa: E731
                                 "</packagepath></install-add>")
    lab.server.start()
    try:
        with lab.server.connect() as m:
            add(m, unsigned)  # before ownership: the default policy takes unsigned owner packages
            apply(m, ov, "disk0:/oc.cms")
            call(m, f'<kpkg-apply xmlns="{KPKG}"><keypackage-type>customer</keypackage-type>'
                    "<keypackage-file>disk0:/kp.cms</keypackage-file></kpkg-apply>")
            call(m, f'<install-remove xmlns="{inst}"><inactive/></install-remove>')
            with pytest.raises(RPCError) as err:
                add(m, unsigned)
            assert error_of(err.value) == ("operation-failed", "owner-signature-required")
            add(m, signed)
            kp = m.get(("subtree", f'<ownership xmlns="{TPO}"><key-package/></ownership>')).data_ele
            assert kp.findtext(f".//{{{TPO}}}key-type") == "GPGKEY"
    finally:
        lab.server.stop()
