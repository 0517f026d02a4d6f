"""Unit tests of the RPM reader, the fingerprints, the KGV rules and the package store."""
from __future__ import annotations

import asyncio
import gzip
import json
import os
import shutil
import stat
import struct
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest

from backends.device.profile import init_state_dir
from backends.engine.software import fingerprint, openpgp, rootfs, rpm
from backends.install import kgv, packages
from backends.install.backend import InstallBackend
from backends.install.packages import InstallError, PackageStore, _install_fingerprint
from yangcore.backend import Services
from yangcore.devfs import DeviceFS
from rpms import (build_rpm, export_public, make_gpg_key, xz_claiming_a_big_dictionary,
                  zstd_claiming_a_big_window)

FILES = {"/opt/t/a.txt": b"alpha\n", "/opt/t/sub/b.bin": os.urandom(70_000)}
NOW = datetime(2026, 11, 30, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("rpm-engine")


def read(path: Path) -> tuple[rpm.RpmPackage, str]:
    with open(path, "rb") as f:
        pkg = rpm.read_package(f)
        return pkg, _install_fingerprint(f, pkg)


@pytest.mark.parametrize("payload", ["w9.gzdio", "w6.xzdio", "w9.bzdio", "w19.zstdio"])
def test_every_payload_compressor_gives_the_same_fingerprint(work, payload):
    path = build_rpm(work, f"t-{payload.split('.')[1]}", FILES, dirs=("/opt/t", "/opt/t/sub"), payload=payload)
    pkg, fp = read(path)
    assert pkg.compressor == {"gzdio": "gzip", "xzdio": "xz", "bzdio": "bzip2", "zstdio": "zstd"}[payload[3:]
                                                                                           .lstrip(".")]
    assert pkg.gpg_key_id == "0"
    records = [(e.path, e.mode, fingerprint.EMPTY if not e.digest else e.digest) for e in pkg.files]
    assert fp == fingerprint.combine(records)  # the header's SHA-256 file digests agree


def test_truncated_and_damaged_packages_are_refused(work, tmp_path):
    data = build_rpm(work, "dmg", FILES, dirs=("/opt/t",)).read_bytes()
    cases = {
        "not-an-rpm": b"\x00" * 200,
        "short": data[:90],
        "cut-header": data[:400],
        "cut-payload": data[:-500],
    }
    sig_nindex = 96 + 8  # the signature header's entry count
    cases["huge-index"] = data[:sig_nindex] + struct.pack(">I", 10**6) + data[sig_nindex + 4:]
    for name, blob in cases.items():
        p = tmp_path / name
        p.write_bytes(blob)
        with pytest.raises(rpm.RpmError) as err:
            read(p)
        assert err.value.code == ("not-an-rpm" if name in ("not-an-rpm", "short") else "rpm-corrupt"), name


@pytest.mark.parametrize("payload, patch, says", [
    ("w6.xzdio", xz_claiming_a_big_dictionary, "the xz data needs more than 134217728 bytes of memory to decompress"),
    ("w19.zstdio", zstd_claiming_a_big_window, "the zstd data needs a window over 134217728 bytes"),
])
def test_payload_decoders_have_a_memory_limit(work, tmp_path, payload, patch, says):
    path = build_rpm(work, f"mem-{payload[3:5]}", FILES, dirs=("/opt/t", "/opt/t/sub"), payload=payload)
    data = bytearray(path.read_bytes())
    with open(path, "rb") as f:
        patch(data, rpm.read_package(f).payload_offset)
    (tmp_path / "p.rpm").write_bytes(data)
    with pytest.raises(rpm.RpmError) as err:
        read(tmp_path / "p.rpm")
    assert (err.value.code, err.value.message) == ("rpm-too-large", f"payload: {says}")


def test_payload_size_is_bounded_in_all_and_per_file(work, monkeypatch):
    path = build_rpm(work, "big", {"/opt/big/a": bytes(300_000), "/opt/big/b": bytes(300_000)}, dirs=("/opt/big",))
    with open(path, "rb") as f:
        pkg = rpm.read_package(f)
        with pytest.raises(rpm.RpmError) as err:
            for item in rpm.payload(f, pkg, max_size=400_000):
                for _ in item.chunks or ():
                    pass
    assert (err.value.code, err.value.message) == ("rpm-too-large", "the payload is larger than 400000 bytes")
    monkeypatch.setattr(rpm, "MAX_FILE_SIZE", 299_999)
    with open(path, "rb") as f, pytest.raises(rpm.RpmError) as err:
        rpm.read_package(f)
    assert err.value.code == "rpm-too-large" and "larger than 299999 bytes each" in err.value.message


def test_a_link_entry_cannot_carry_a_large_content(work, tmp_path):
    """A cpio entry for a link whose size says 1 GiB is refused before it is read."""
    path = build_rpm(work, "lnk", {"/opt/l/a": b"a"}, dirs=("/opt/l",), symlinks={"/opt/l/ln": "a"})
    data = path.read_bytes()
    with open(path, "rb") as f:
        at = rpm.read_package(f).payload_offset
    cpio = bytearray(gzip.decompress(data[at:]))
    head = cpio.index(b"./opt/l/ln\0") - 110
    cpio[head + 54:head + 62] = b"40000000"  # c_filesize
    (tmp_path / "p.rpm").write_bytes(data[:at] + gzip.compress(bytes(cpio)))
    with pytest.raises(rpm.RpmError) as err:
        read(tmp_path / "p.rpm")
    assert (err.value.code, err.value.message) == ("rpm-corrupt", "payload entry '/opt/l/ln' has 1073741824 bytes "
                                                                  "of content")


def test_run_time_fingerprint_sees_every_kind_of_change(tmp_path):
    root = tmp_path
    (root / "opt/p/bin").mkdir(parents=True)
    (root / "opt/p/bin/x").write_bytes(b"x")
    os.symlink("x", root / "opt/p/bin/y")
    files, dirs = ["/opt/p", "/opt/p/bin", "/opt/p/bin/x", "/opt/p/bin/y"], ["/opt/p", "/opt/p/bin"]
    base = fingerprint.run_time(root, files, dirs)
    assert base == fingerprint.run_time(root, files, dirs, workers=1)
    changes = [
        lambda: (root / "opt/p/bin/x").write_bytes(b"z"),
        lambda: os.chmod(root / "opt/p/bin/x", 0o700),
        lambda: (root / "opt/p/bin/x").unlink(),
        lambda: (root / "opt/p/new").write_bytes(b""),
        lambda: (os.unlink(root / "opt/p/bin/y"), os.symlink("elsewhere", root / "opt/p/bin/y")),
    ]
    for change in changes:
        change()
        assert fingerprint.run_time(root, files, dirs) != base
        base = fingerprint.run_time(root, files, dirs)
    # a file another package owns does not count
    (root / "opt/p/theirs").write_bytes(b"t")
    assert fingerprint.run_time(root, files, dirs, foreign={"/opt/p/theirs"}) == base


def test_run_time_walk_never_leaves_the_root_through_a_link(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (outside / "p").mkdir(parents=True)
    (outside / "p" / "secret").write_bytes(b"s")
    (root / "opt").mkdir(parents=True)
    os.symlink(outside / "p", root / "opt/p")  # the package's top directory, swapped for a link
    fp = fingerprint.run_time(root, ["/opt/p"], ["/opt/p"])
    (outside / "p" / "secret").write_bytes(b"changed")
    (outside / "p" / "more").write_bytes(b"")
    assert fingerprint.run_time(root, ["/opt/p"], ["/opt/p"]) == fp
    assert fingerprint.tree_paths(os.open(root, os.O_RDONLY), [], ["/opt/p"], set()) == []
    # a link higher up: the package's paths read as missing, not as what the link reaches
    shutil.rmtree(root / "opt")
    os.symlink(outside, root / "opt")
    paths = ["/opt/p", "/opt/p/secret"]
    missing = fingerprint.combine((p, 0, fingerprint.EMPTY) for p in paths)
    assert fingerprint.run_time(root, paths, ["/opt/p"]) == missing


def tree(root: Path) -> list[tuple[str, int, str]]:
    out = []
    for here, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(here, name)
            st = os.lstat(p)
            out.append((os.path.relpath(p, root), st.st_mode,
                        os.readlink(p) if stat.S_ISLNK(st.st_mode) else ""))
    return sorted(out)


@pytest.fixture(scope="module")
def link_packages(work):
    """linker installs /opt/x as a link to a directory outside the root; xowner owns the
    directory /opt/x (mode 0777) and a file in it."""
    outside = work / "outside"
    outside.mkdir()
    link = build_rpm(work, "linker", {}, symlinks={"/opt/x": str(outside)})
    owner = build_rpm(work, "xowner", {"/opt/x/f": b"f\n"}, dirs=("/opt/x",), modes={"/opt/x": 0o777})
    return outside, link, owner


@pytest.mark.parametrize("order", [["linker"], ["linker", "xowner"], ["xowner", "linker"]])
def test_activation_never_follows_a_link_a_package_placed(link_packages, tmp_path, order):
    outside, link, owner = link_packages
    os.chmod(outside, 0o700)
    store = PackageStore(tmp_path / "install", {})
    store.add([link, owner])
    nvra = {"linker": "linker-1.0.0-r1.noarch", "xowner": "xowner-1.0.0-r1.noarch"}
    if order == ["linker"]:
        store.activate([nvra["linker"]])
        order = ["xowner"]
    before, root_before = json.dumps(store.state), tree(store.root)
    with pytest.raises(InstallError) as err:
        store.activate([nvra[n] for n in order])
    assert (err.value.code, err.value.message) == (
        ("path-escape", "xowner-1.0.0-r1.noarch: /opt/x is a symbolic link; the package root's paths are never "
                        "followed through links") if order[0] == "linker" or len(order) == 1 else
        ("file-conflict", "linker-1.0.0-r1.noarch: /opt/x is a directory in the package root"))
    assert stat.S_IMODE(os.stat(outside).st_mode) == 0o700 and os.listdir(outside) == []
    assert json.dumps(store.state) == before and json.loads(store.path.read_text()) == store.state
    assert tree(store.root) == root_before
    assert sorted(os.listdir(store.base)) == ["repo", "root", "state.json"]


def test_kgv_rules():
    good = b'{"packages": [{"name": "a", "version": "1", "release": "r1", "fingerprint": "' + b"A" * 64 + b'"},' \
           b'{"name": "a", "version": "1", "release": "r1", "architecture": "x86_64", "fingerprint": "' + \
           b"b" * 64 + b'"}]}'
    table = kgv.parse(good)
    assert kgv.lookup(table, "a", "1", "r1", "x86_64") == "b" * 64
    assert kgv.lookup(table, "a", "1", "r1", "noarch") == "a" * 64
    assert kgv.lookup(table, "a", "2", "r1", "noarch") is None
    assert kgv.verdict(None, "1", "1") == "no-kgv"
    assert kgv.verdict("k", "x", "x") == "install-time-mismatch"
    assert kgv.verdict("k", "k", "x") == "run-time-drift"
    assert kgv.verdict("k", "k", "k") == "genuine"
    for bad in (b"[]", b'{"packages": [1]}', b'{"packages": [{"name": "a"}]}', b"\xff"):
        with pytest.raises(kgv.KgvError):
            kgv.parse(bad)


def test_store_add_is_all_or_nothing(work, tmp_path):
    good = build_rpm(work, "good", FILES, dirs=("/opt/t",))
    bad = tmp_path / "bad.rpm"
    bad.write_bytes(b"nope")
    store = PackageStore(tmp_path / "install", {})
    with pytest.raises(InstallError) as err:
        store.add([good, bad])
    assert err.value.code == "not-an-rpm"
    assert store.state["packages"] == {} and os.listdir(store.repo) == []
    op, nvras = store.add([good])
    assert nvras == ["good-1.0.0-r1.noarch"] and store.operation(op) == nvras


def test_staging_never_writes_through_a_link_the_package_holds(tmp_path):
    outside, stage = tmp_path / "outside", tmp_path / "stage"
    outside.mkdir()
    stage.mkdir()
    link = rpm.FileEntry("/opt/ln", stat.S_IFLNK | 0o777, 0, "", str(outside), False)
    inner = rpm.FileEntry("/opt/ln/f", stat.S_IFREG | 0o644, 1, "", "", False)
    fd = os.open(stage, os.O_RDONLY | os.O_DIRECTORY)
    try:
        packages._extract(fd, rpm.PayloadItem(link, None))
        with pytest.raises(rootfs.PathBlocked) as err:
            packages._extract(fd, rpm.PayloadItem(inner, iter([b"x"])))
    finally:
        os.close(fd)
    assert (err.value.path, err.value.kind) == ("/opt/ln", "link") and os.listdir(outside) == []


def test_add_keeps_the_bytes_it_checked(work, tmp_path, monkeypatch):
    """The user's file is replaced right after the package was checked: the repository holds
    what was checked, not what the file holds now."""
    good = build_rpm(work, "swap", FILES, dirs=("/opt/t",))
    user = tmp_path / "user.rpm"
    shutil.copyfile(good, user)
    genuine = good.read_bytes()
    real = packages._install_fingerprint

    def check_then_swap(f, pkg):
        fp = real(f, pkg)
        user.write_bytes(b"forged " + genuine)
        return fp

    monkeypatch.setattr(packages, "_install_fingerprint", check_then_swap)
    store = PackageStore(tmp_path / "install", {})
    store.add([user])
    assert os.listdir(store.repo) == ["swap-1.0.0-r1.noarch.rpm"]
    assert (store.repo / "swap-1.0.0-r1.noarch.rpm").read_bytes() == genuine


def test_periodic_collection_follows_the_configured_frequency(work, tmp_path):
    state = tmp_path / "state"
    init_state_dir(state, tmp_path / "lab", now=NOW)
    pkg = build_rpm(work, "per", FILES, dirs=("/opt/t", "/opt/t/sub"))

    class Tree:  # the configuration as apply() reads it
        def __init__(self, freq):
            self.freq = freq

        def find_path(self, path):
            if self.freq is None:
                return None
            return type("Leaf", (), {"value": lambda _self: self.freq})()

    async def scenario():
        services = Services(state_dir=state, devfs=DeviceFS(state / "fs"), clock=lambda: NOW)
        backend = InstallBackend(services)
        backend.HOUR = 0.05
        try:
            backend.store.add([pkg])
            backend.store.activate(["per-1.0.0-r1.noarch"])
            await asyncio.sleep(0.3)
            assert backend.store.state["run-time"] == {}  # nothing configured: no periodic run
            backend.apply(type("Diff", (), {"new": Tree(1)})())
            await asyncio.sleep(0.3)
            fp = backend.store.state["run-time"]["per-1.0.0-r1.noarch"]
            assert fp == backend.store.package("per-1.0.0-r1.noarch")["install-time"]
        finally:
            backend.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("algo", ["rsa3072", "ed25519"])  # rpm 4.18 signs with no other algorithm
def test_openpgp_verifies_rpmsign_signatures(work, algo):
    key = make_gpg_key(work / f"gnupg-{algo}", f"Signer {algo} <{algo}@example.net>", algo)
    path = build_rpm(work, f"sig-{algo}", FILES, key=key)
    with open(path, "rb") as f:
        pkg = rpm.read_package(f)
    assert pkg.gpg_key_id == key.key_id
    keys = {k.key_id: k for k in openpgp.load_keys(export_public(key))}
    sig = openpgp.parse_signature(pkg.header_signature)
    openpgp.verify(sig, pkg.header_blob, keys[sig.issuer])
    with pytest.raises(openpgp.OpenPGPError):
        openpgp.verify(sig, pkg.header_blob[:-1] + b"\x01", keys[sig.issuer])


@pytest.mark.parametrize("algo", ["nistp256", "nistp384"])
def test_openpgp_verifies_gpg_ecdsa_signatures(work, tmp_path, algo):
    key = make_gpg_key(work / f"gnupg-{algo}", f"Signer {algo} <{algo}@example.net>", algo)
    data = tmp_path / "data"
    data.write_bytes(b"header bytes" * 100)
    subprocess.run(["gpg", "--batch", "--digest-algo", "SHA384", "--detach-sign", str(data)], check=True,
                   capture_output=True, env=dict(os.environ, GNUPGHOME=str(key.home)))
    sig = openpgp.parse_signature((tmp_path / "data.sig").read_bytes())
    keys = {k.key_id: k for k in openpgp.load_keys(export_public(key))}
    openpgp.verify(sig, data.read_bytes(), keys[sig.issuer])
    with pytest.raises(openpgp.OpenPGPError):
        openpgp.verify(sig, data.read_bytes() + b"!", keys[sig.issuer])


def test_openpgp_refuses_weak_and_foreign_keys(work):
    weak = make_gpg_key(work / "gnupg-weak", "Weak <weak@example.net>", "rsa1024")
    with pytest.raises(openpgp.OpenPGPError, match="too weak"):
        openpgp.load_keys(export_public(weak))
    for junk in (b"", b"hello", b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n!!!\n-----END PGP PUBLIC KEY BLOCK-----\n"):
        with pytest.raises(openpgp.OpenPGPError):
            openpgp.load_keys(junk)
