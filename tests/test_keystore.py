"""The key store (backends.engine.keys.keystore): families, labels, files and modes,
replacement, zeroize, import of public keys made by openssl / ssh-keygen, and the
"show crypto key mypubkey" data layout."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import threading
import traceback
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives import hashes

from backends.engine.keys import keystore as ks_mod
from backends.engine.errors import EngineError
from backends.engine.keys.keystore import DEFAULT_LABEL, KeyInfo, Keystore, KeystoreError
from conftest import raises_code

NOW = datetime(2020, 2, 6, 1, 13, 10, tzinfo=timezone.utc)
LATER = datetime(2020, 3, 27, 14, 0, 20, tzinfo=timezone.utc)

# "show crypto key mypubkey rsa" for system-root-key, as the seed prints it
SEED_2048 = """\
30820122 300D0609 2A864886 F70D0101 01050003 82010F00 3082010A 02820101
00A93DE0 1E485EE3 0E7F0964 C48361D1 B6014BE7 A303D8D6 F7790E92 88E69C4B
B97B7A9C D1B277E3 1569093C 82BD3258 7F67FB49 94860ECD 34498F1F 59B45757
F32C8E8F 7CEE23EC C36A43D1 9F85C0D9 B96A14DD DD3BBD4C A1FB0888 EED210A7
39D9A403 7ACE0F6E 39107226 CA621AD8 6E8102CA 9761B86F D33F2871 9DD16559
AFCB4729 EFCEDBAF 83DF76E4 9A439844 EE3B1180 4022F575 99E11A2C E25BB23D
9DD74C81 4E5C1345 D9E3CC79 1B98B1AA 6C06F004 22B901EC 36C099FE 10DE2622
EB7CE618 9A555769 12D94C90 D9BEE5EA A664E7F6 4DF8D8D4 FE7EAB07 1EF4FEAB
22D9E55F 62BA66A0 72153CEC 81F2639F B5F2B5C5 25E10364 19387C6B E8DB8990
11020301 0001"""

# the seed's 1024-bit "mykey" block (its leading space is page layout)
SEED_1024 = """\
30819F30 0D06092A 864886F7 0D010101 05000381 8D003081 89028181 00CB8D86
BF6707AA FD7E4F08 A1F70080 B9E6016B 8128004C B477817B BCF35106 BC60B06E
07A417FD 7979D262 B35465A6 1D3B70D1 36ACAFBD 7F91D5A0 CFB0EE91 B9D52C69
7CAF89ED F66A6A58 89EEF776 A03916CB 3663FB17 B7DBEBF8 1C54AF7F 293F3004
C15B08A8 C6965F1E 289DD724 BD40AF59 E90E44D5 7D590000 5C4BEA9D B5020301
0001"""

# the seed's "show crypto key mypubkey ed25519" block: the bare 32-byte key
SEED_ED25519 = "FF0ED4E7 71531B3D 9ED72C48 3F79EC59 9EFECCC3 46A129B2 FAAA12DD EE9D0351"

HAVE_OPENSSL = shutil.which("openssl") is not None
HAVE_SSH_KEYGEN = shutil.which("ssh-keygen") is not None


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def key_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix == ".pem")


def index(directory: Path) -> dict:
    return json.loads((directory / "index.json").read_text())


def file_of(directory: Path, family: str, label: str, usage: str = "general") -> Path:
    for entry in index(directory)["keys"]:
        if (entry["family"], entry["label"], entry["usage"]) == (family, label, usage):
            return directory / entry["file"]
    raise AssertionError(f"no index entry for {family} {label} {usage}")


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "state" / "keystore"


@pytest.fixture
def store(store_dir: Path) -> Keystore:
    return Keystore(store_dir)


def expect(code: str, tag: str | None = None):
    return raises_code(KeystoreError, code, tag)


# ---- generation, files and modes ------------------------------------------------

def test_generate_each_family_files_and_modes(store: Keystore, store_dir: Path):
    assert mode(store_dir) == 0o700
    (r,) = store.generate_rsa(DEFAULT_LABEL, 2048, now=NOW)
    p256 = store.generate_ecdsa(DEFAULT_LABEL, "nistp256", now=NOW)
    p384 = store.generate_ecdsa(DEFAULT_LABEL, "nistp384", now=NOW)
    p521 = store.generate_ecdsa(DEFAULT_LABEL, "nistp521", now=NOW)
    ed = store.generate_ed25519(DEFAULT_LABEL, now=NOW)

    assert (r.family, r.usage, r.size, r.curve) == ("rsa", "general", 2048, None)
    assert [(k.size, k.curve) for k in (p256, p384, p521)] == [
        (256, "nistp256"), (384, "nistp384"), (521, "nistp521")]
    assert (ed.family, ed.size, ed.curve) == ("ed25519", 256, None)
    assert all(k.label == DEFAULT_LABEL and k.created == NOW for k in (r, p256, p384, p521, ed))

    files = key_files(store_dir)
    assert len(files) == 5
    for f in files:
        assert mode(f) == 0o600
        text = f.read_text()
        assert text.startswith("-----BEGIN PRIVATE KEY-----")   # PKCS#8, not encrypted
    assert mode(store_dir / "index.json") == 0o600
    assert mode(store_dir) == 0o700
    assert sorted(p.name for p in store_dir.iterdir()) == sorted(
        [f.name for f in files] + ["index.json"])

    # each stored private key is the one whose public half was reported
    for info, cls in ((r, rsa.RSAPrivateKey), (p384, ec.EllipticCurvePrivateKey),
                      (ed, ed25519.Ed25519PrivateKey)):
        key = store.private_key(info.family, info.label, curve=info.curve)
        assert isinstance(key, cls)
        assert key.public_key().public_bytes(
            serialization.Encoding.DER,
            serialization.PublicFormat.SubjectPublicKeyInfo) == info.public_der
    assert store.private_key("ecdsa", DEFAULT_LABEL, curve="nistp521").curve.name == "secp521r1"

    assert [(k.family, k.curve) for k in store.keys()] == [
        ("ecdsa", "nistp256"), ("ecdsa", "nistp384"), ("ecdsa", "nistp521"),
        ("ed25519", None), ("rsa", None)]


def test_directory_mode_is_tightened(tmp_path: Path):
    d = tmp_path / "ks"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    Keystore(d)
    assert mode(d) == 0o700


@pytest.mark.parametrize("label", ["../escape", "../../etc/passwd", "/etc/passwd", "a/b/c", ".",
                                   "..", "index.json", "ключ 🔑 鍵", "x" * 800, "  spaced  "])
def test_labels_stay_inside_the_directory(tmp_path: Path, label: str):
    d = tmp_path / "deep" / "keystore"
    store = Keystore(d)
    info = store.generate_ed25519(label, now=NOW)
    assert info.label == label
    # nothing outside the directory, and only random-id files and the index inside
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(
        ["deep", "keystore", "index.json", key_files(d)[0].name])
    assert len(key_files(d)) == 1
    assert Keystore(d).find("ed25519", label) == [info]
    assert store.private_key("ed25519", label) is not None


@pytest.mark.parametrize("label", ["", "x" * 801, None, 7, "a\x00b"])
def test_bad_labels_refused(store: Keystore, label):
    with expect("invalid-label", "invalid-value"):
        store.generate_ed25519(label, now=NOW)


def test_usage_keys_give_two(store: Keystore, store_dir: Path):
    keys = store.generate_rsa("usage", 2048, usage_keys=True, now=NOW)
    assert [k.usage for k in keys] == ["signature", "encryption"]
    assert [k.type_text() for k in keys] == ["RSA Usage (signature)", "RSA Usage (encryption)"]
    assert keys[0].public_der != keys[1].public_der
    assert sorted(k.usage for k in store.find("rsa", "usage")) == ["encryption", "signature"]
    sig = store.private_key("rsa", "usage", usage="signature")
    enc = store.private_key("rsa", "usage", usage="encryption")
    assert sig.private_numbers() != enc.private_numbers()
    with expect("key-not-found", "data-missing"):
        store.private_key("rsa", "usage")          # no general-purpose key under that label
    assert len(key_files(store_dir)) == 2


def test_type_text(store: Keystore):
    (r,) = store.generate_rsa("k", 2048, now=NOW)
    assert r.type_text() == "RSA General purpose"
    assert store.generate_ecdsa("k", "nistp384", now=NOW).type_text() == "ECDSA General Curve Nistp384"
    assert store.generate_ed25519("k", now=NOW).type_text() == "ED25519"


# ---- replacing -----------------------------------------------------------------

def test_replacing_a_label(store: Keystore, store_dir: Path):
    (first,) = store.generate_rsa("mykey", 2048, now=NOW)
    first_file = file_of(store_dir, "rsa", "mykey")
    store.generate_ed25519("mykey", now=NOW)          # other family, same label: kept
    (second,) = store.generate_rsa("mykey", 2048, now=LATER)
    assert second.public_der != first.public_der
    assert store.find("rsa", "mykey") == [second]
    assert not first_file.exists()
    assert len(store.find("ed25519", "mykey")) == 1

    # general purpose replaced by usage keys and back
    store.generate_rsa("mykey", 2048, usage_keys=True, now=LATER)
    assert [k.usage for k in store.find("rsa", "mykey")] == ["encryption", "signature"]
    store.generate_rsa("mykey", 2048, now=LATER)
    assert [k.usage for k in store.find("rsa", "mykey")] == ["general"]
    assert len(key_files(store_dir)) == 2             # rsa + ed25519: nothing left behind


def test_ecdsa_labels_are_per_curve(store: Keystore, store_dir: Path):
    a = store.generate_ecdsa("k", "nistp256", now=NOW)
    b = store.generate_ecdsa("k", "nistp384", now=NOW)
    assert store.find("ecdsa", "k") == [a, b]
    a2 = store.generate_ecdsa("k", "nistp256", now=LATER)
    assert store.find("ecdsa", "k", curve="nistp256") == [a2]
    assert store.find("ecdsa", "k", curve="nistp384") == [b]
    assert len(key_files(store_dir)) == 2
    with expect("key-ambiguous", "invalid-value"):
        store.private_key("ecdsa", "k")
    with expect("invalid-key-size", "invalid-value"):
        store.generate_ecdsa("k", "secp256k1", now=NOW)


# ---- zeroize -------------------------------------------------------------------

def test_zeroize_overwrites_before_unlink(store: Keystore, store_dir: Path, monkeypatch):
    (info,) = store.generate_rsa("victim", 2048, now=NOW)
    store.generate_rsa("bystander", 2048, now=NOW)
    path = file_of(store_dir, "rsa", "victim")
    original = path.read_bytes()
    seen: dict[str, bytes] = {}
    real_unlink = os.unlink

    def spy(p, *a, **kw):
        seen[os.fspath(p)] = Path(p).read_bytes()
        return real_unlink(p, *a, **kw)

    monkeypatch.setattr(os, "unlink", spy)
    removed = store.zeroize("rsa", "victim")
    monkeypatch.undo()

    assert removed == [info]
    content = seen[os.fspath(path)]
    assert len(content) == len(original)
    assert content != original
    assert b"PRIVATE KEY" not in content
    assert not path.exists()

    # the index agrees with the files, also for a fresh store
    assert [k.label for k in store.keys()] == ["bystander"]
    assert Keystore(store_dir).keys() == store.keys()
    assert [e["file"] for e in index(store_dir)["keys"]] == [p.name for p in key_files(store_dir)]
    with expect("key-not-found", "data-missing"):
        store.private_key("rsa", "victim")


def test_zeroize_whole_family_and_curve(store: Keystore, store_dir: Path):
    store.generate_ecdsa("a", "nistp256", now=NOW)
    store.generate_ecdsa("b", "nistp256", now=NOW)
    store.generate_ecdsa("a", "nistp384", now=NOW)
    store.generate_ed25519("a", now=NOW)
    removed = store.zeroize("ecdsa", curve="nistp256")
    assert [(k.label, k.curve) for k in removed] == [("a", "nistp256"), ("b", "nistp256")]
    assert [(k.family, k.curve) for k in store.keys()] == [("ecdsa", "nistp384"), ("ed25519", None)]
    removed = store.zeroize("ecdsa")
    assert [(k.label, k.curve) for k in removed] == [("a", "nistp384")]
    assert len(key_files(store_dir)) == 1
    with expect("key-not-found", "data-missing"):
        store.zeroize("ecdsa")
    with expect("key-not-found"):
        store.zeroize("rsa", "nothing-here")
    with expect("key-not-found"):
        store.zeroize("dsa")
    assert Keystore(store_dir).keys() == store.keys()


# ---- refusals ------------------------------------------------------------------

def test_weak_rsa_refused(store: Keystore, store_dir: Path):
    with expect("weak-key", "invalid-value") as info:
        store.generate_rsa("weak", 1024, now=NOW)
    assert "512..4096" in info.value.message and "2048" in info.value.message
    with expect("weak-key"):
        store.generate_rsa("weak", 512, now=NOW)
    assert store.keys() == [] and key_files(store_dir) == []


def test_dsa_refused(store: Keystore):
    with expect("weak-key", "invalid-value") as info:
        store.generate_dsa("dsakey", 1024, now=NOW)
    assert "512..4096" in info.value.message and "2048" in info.value.message
    assert "DSA" in info.value.message
    assert isinstance(info.value, EngineError)


@pytest.mark.parametrize("bits", [4104, 8192, 2050, 3000 + 1, True, "2048"])
def test_bad_rsa_sizes(store: Keystore, bits):
    with expect("invalid-key-size", "invalid-value"):
        store.generate_rsa("k", bits, now=NOW)


def test_rsa_4096_and_odd_multiple_of_8(store: Keystore):
    (k,) = store.generate_rsa("big", 4096, now=NOW)
    assert k.size == 4096 and store.private_key("rsa", "big").key_size == 4096
    (k,) = store.generate_rsa("odd", 2056, now=NOW)
    assert k.size == 2056


# ---- import ---------------------------------------------------------------------

def _run(*args: str, cwd: Path) -> bytes:
    return subprocess.run(args, cwd=cwd, check=True, capture_output=True).stdout


@pytest.fixture(scope="module")
def openssl_rsa(tmp_path_factory) -> Path:
    if not HAVE_OPENSSL:
        pytest.skip("openssl CLI not installed")
    d = tmp_path_factory.mktemp("openssl-rsa")
    _run("openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
         "-out", "priv.pem", cwd=d)
    os.chmod(d / "priv.pem", 0o600)
    _run("openssl", "rsa", "-in", "priv.pem", "-pubout", "-out", "spki.pem", cwd=d)
    _run("openssl", "rsa", "-in", "priv.pem", "-pubout", "-outform", "DER", "-out", "spki.der", cwd=d)
    _run("openssl", "rsa", "-in", "priv.pem", "-RSAPublicKey_out", "-out", "pkcs1.pem", cwd=d)
    _run("openssl", "rsa", "-in", "priv.pem", "-RSAPublicKey_out", "-outform", "DER",
         "-out", "pkcs1.der", cwd=d)
    return d


@pytest.mark.parametrize("name", ["spki.pem", "spki.der", "pkcs1.pem", "pkcs1.der"])
def test_import_openssl_public_keys(store: Keystore, store_dir: Path, openssl_rsa: Path, name):
    spki = (openssl_rsa / "spki.der").read_bytes()
    info = store.import_authentication_rsa((openssl_rsa / name).read_bytes(), "auth", now=NOW)
    assert (info.family, info.usage, info.size, info.label) == (
        "rsa-authentication", "authentication", 2048, "auth")
    assert info.public_der == spki
    assert info.type_text() == "RSA public key used for authentication"
    assert key_files(store_dir) == []                  # public keys live in the index only
    assert Keystore(store_dir).find("rsa-authentication", "auth") == [info]
    with expect("key-not-found"):
        store.private_key("rsa-authentication", "auth", usage="authentication")


@pytest.mark.skipif(not HAVE_SSH_KEYGEN, reason="ssh-keygen not installed")
def test_import_ssh_keygen_line(store: Keystore, openssl_rsa: Path):
    line = _run("ssh-keygen", "-y", "-f", "priv.pem", cwd=openssl_rsa)
    assert line.startswith(b"ssh-rsa AAAA")
    info = store.import_authentication_rsa(line.strip() + b" admin@laptop\n", "ssh", now=NOW)
    assert info.public_der == (openssl_rsa / "spki.der").read_bytes()
    # replacing the same label keeps one entry
    store.import_authentication_rsa((openssl_rsa / "spki.pem").read_bytes(), "ssh", now=LATER)
    assert [k.created for k in store.find("rsa-authentication", "ssh")] == [LATER]


def test_import_refusals(store: Keystore, tmp_path: Path):
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with expect("weak-key", "invalid-value"):
        store.import_authentication_rsa(weak.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
            "w", now=NOW)
    ec_pub = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with expect("key-import-invalid", "invalid-value"):
        store.import_authentication_rsa(ec_pub, "e", now=NOW)
    for junk in (b"", b"hello", b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
                 b"ssh-rsa !!!", b"\x30\x03\x02\x01\x01", b"A" * (70 * 1024)):
        with expect("key-import-invalid"):
            store.import_authentication_rsa(junk, "j", now=NOW)
    # a private key pasted by mistake is refused and never echoed
    priv = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with expect("key-import-invalid") as info:
        store.import_authentication_rsa(priv, "p", now=NOW)
    body = priv.decode().splitlines()[1]
    assert body not in str(info.value) and body not in repr(info.value)
    assert body not in "".join(traceback.format_exception(info.value))
    assert store.keys() == []


# ---- persistence ---------------------------------------------------------------

def test_reload_from_disk(store: Keystore, store_dir: Path):
    store.generate_rsa("r", 2048, usage_keys=True, now=NOW)
    store.generate_ecdsa("e", "nistp521", now=NOW)
    store.generate_ed25519("ключ", now=LATER)
    again = Keystore(store_dir)
    assert again.keys() == store.keys()
    assert [k.created for k in again.find("ed25519", "ключ")] == [LATER]
    msg = b"sign me"
    key = again.private_key("rsa", "r", usage="signature")
    sig = key.sign(msg, padding.PKCS1v15(), hashes.SHA256())
    (pub,) = [k for k in store.find("rsa", "r") if k.usage == "signature"]
    pub.public_key().verify(sig, msg, padding.PKCS1v15(), hashes.SHA256())


def test_failed_index_write_keeps_old_key(store: Keystore, store_dir: Path, monkeypatch):
    (old,) = store.generate_rsa("k", 2048, now=NOW)
    old_file = file_of(store_dir, "rsa", "k")

    def broken(*a, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    with expect("storage-failed"):
        store.generate_rsa("k", 2048, now=LATER)
    monkeypatch.undo()
    assert store.find("rsa", "k") == [old]
    assert key_files(store_dir) == [old_file]          # the new key file was erased
    assert Keystore(store_dir).find("rsa", "k") == [old]
    assert not [p for p in store_dir.iterdir() if p.name.endswith(".tmp")]


def test_interrupted_write_leftovers_are_swept(store: Keystore, store_dir: Path):
    store.generate_ed25519("keep", now=NOW)
    stray = store_dir / ("ab" * 16 + ".pem")
    stray.write_bytes(b"-----BEGIN PRIVATE KEY-----\nleft by a crash\n")
    tmp = store_dir / ".index.json.0123456789abcdef.tmp"
    tmp.write_text("{")
    other = store_dir / "notes.txt"                     # not ours: left alone
    other.write_text("x")
    again = Keystore(store_dir)
    assert not stray.exists() and not tmp.exists() and other.exists()
    assert [k.label for k in again.keys()] == ["keep"]
    assert again.private_key("ed25519", "keep") is not None


def test_corrupt_index(store_dir: Path):
    Keystore(store_dir).generate_ed25519("k", now=NOW)
    doc = index(store_dir)
    doc["keys"][0]["file"] = "../../etc/passwd"
    (store_dir / "index.json").write_text(json.dumps(doc))
    with expect("keystore-corrupt"):
        Keystore(store_dir)
    (store_dir / "index.json").write_text("not json")
    with expect("keystore-corrupt"):
        Keystore(store_dir)


def test_concurrent_generation(store: Keystore, store_dir: Path):
    errors: list[BaseException] = []

    def work(i: int):
        try:
            store.generate_ed25519(f"t{i}", now=NOW)
            store.generate_ecdsa("shared", "nistp256", now=NOW)
            store.keys()
        except BaseException as exc:   # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert len(store.keys()) == 9
    assert len(key_files(store_dir)) == 9
    assert Keystore(store_dir).keys() == store.keys()


def test_keystore_full(store: Keystore, monkeypatch):
    monkeypatch.setattr(ks_mod, "MAX_KEYS", 2)
    store.generate_ed25519("a", now=NOW)
    store.generate_ed25519("b", now=NOW)
    store.generate_ed25519("b", now=NOW)              # a replacement still fits
    with expect("keystore-full", "resource-denied"):
        store.generate_ed25519("c", now=NOW)


# ---- "Data :" layout -----------------------------------------------------------

def _info_for(spki: bytes, family: str = "rsa", size: int = 2048) -> KeyInfo:
    return KeyInfo(family, "x", "general", size, None, NOW, spki)


def test_data_hex_reproduces_the_seed_blocks():
    for block, bits in ((SEED_2048, 2048), (SEED_1024, 1024)):
        spki = bytes.fromhex(block.replace(" ", "").replace("\n", ""))
        assert serialization.load_der_public_key(spki).key_size == bits
        assert _info_for(spki, size=bits).data_hex() == block
    raw = bytes.fromhex(SEED_ED25519.replace(" ", ""))
    spki = ed25519.Ed25519PublicKey.from_public_bytes(raw).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert _info_for(spki, "ed25519", 256).data_hex() == SEED_ED25519


def test_data_hex_layout_of_a_generated_key(store: Keystore):
    (k,) = store.generate_rsa(DEFAULT_LABEL, 2048, now=NOW)
    lines = k.data_hex().split("\n")
    assert lines[0].startswith("30820122 300D0609 2A864886 F70D0101")
    assert len(lines) == 10
    assert all(len(line.split(" ")) == 8 for line in lines[:-1])
    assert lines[-1].endswith("020301 0001") and len(lines[-1]) == 13
    assert all(len(g) == 8 for line in lines[:-1] for g in line.split(" "))
    assert bytes.fromhex(k.data_hex().replace(" ", "").replace("\n", "")) == k.public_der
    ed = store.generate_ed25519(DEFAULT_LABEL, now=NOW)
    assert len(ed.data_hex()) == 8 * 8 + 7
    p256 = store.generate_ecdsa(DEFAULT_LABEL, "nistp256", now=NOW)
    assert p256.data_hex().startswith("04")          # uncompressed point, 65 bytes
    assert len(p256.data_bytes()) == 65


def test_reprs_hold_no_private_material(store: Keystore, store_dir: Path):
    (k,) = store.generate_rsa("r", 2048, now=NOW)
    pem = file_of(store_dir, "rsa", "r").read_text().splitlines()[1]
    assert pem not in repr(k) and pem not in repr(store.keys())
    assert "public_der" not in repr(k)


def test_failed_directory_sync_after_the_index_is_replaced_keeps_the_new_key(store: Keystore, store_dir: Path,
                                                                               monkeypatch):
    """Once the index names the new key, its file must stay: the sync failure is only logged."""
    real = ks_mod._fsync_dir
    calls = []

    def flaky(directory):
        calls.append(directory)
        if len(calls) == 2:  # the sync after the index rename
            raise OSError(5, "Input/output error")
        real(directory)
    monkeypatch.setattr(ks_mod, "_fsync_dir", flaky)
    (info,) = store.generate_rsa("k", 2048, now=NOW)
    monkeypatch.undo()
    assert len(calls) == 2
    assert Keystore(store_dir).find("rsa", "k") == [info]
    assert Keystore(store_dir).private_key("rsa", "k").public_key().public_numbers() == \
        store.private_key("rsa", "k").public_key().public_numbers()


def test_failed_key_file_write_leaves_no_part_of_it(store: Keystore, store_dir: Path, monkeypatch):
    real_write = os.write

    def short(fd, data):
        if bytes(data[:10]) != b"-----BEGIN":  # the erasing overwrite goes through
            return real_write(fd, data)
        real_write(fd, data[:100])  # a part of the key reaches the disk, then the disk is full
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "write", short)
    with expect("storage-failed"):
        store.generate_ed25519("e", now=NOW)
    monkeypatch.undo()
    assert key_files(store_dir) == []
    assert store.keys() == []
