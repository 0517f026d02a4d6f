"""The device's key store, kept the way IOS XR keeps crypto keys: per algorithm family
(`rsa`, `ecdsa`, `ed25519`, plus imported `rsa-authentication` public keys), each key
under a label that may repeat across families.

On disk, one directory (mode 0700):
- one PKCS#8 PEM file per private key, mode 0600, named by a random id, never by the
  label, so no label can reach outside the directory;
- `index.json`, the metadata, replaced atomically (temp file, fsync, rename).

A new key file is written and synced before the index names it, and an old key file is
erased only after the index has dropped it, so a crash leaves the old key or the new one.
Key files that no index entry names (left by a crash) are erased when the store opens.

Sizes: RSA modulus 2048..4096 bits in steps of 8 (IOS XR offers 512..4096; keys under
2048 bits are refused as weak, and whole octets keep the reported size exact). DSA is
refused. Imported RSA public keys may be 2048..8192 bits.

No clock of its own: callers pass `now`. Private keys never appear in an error, a repr
or a log line.
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import secrets
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from backends.engine.errors import EngineError

log = logging.getLogger(__name__)

DEFAULT_LABEL = "the_default"
MAX_LABEL = 800
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 4096
MAX_IMPORT_RSA_BITS = 8192
IOS_XR_RSA_RANGE = (512, 4096)
MAX_KEYS = 512                       # whole store; a router holds a handful
MAX_KEY_FILE = 64 * 1024             # a 4096-bit PKCS#8 PEM is about 3.3 KiB
MAX_INDEX = 8 * 1024 * 1024
MAX_IMPORT = 64 * 1024
MAX_DIR_ENTRIES = 10_000             # bound on the orphan sweep

FAMILIES = ("rsa", "ecdsa", "ed25519", "rsa-authentication")
USAGES = ("general", "signature", "encryption", "authentication")
CURVES = {"nistp256": (ec.SECP256R1, 256), "nistp384": (ec.SECP384R1, 384),
          "nistp521": (ec.SECP521R1, 521)}
_CURVE_BY_OID_NAME = {"secp256r1": "nistp256", "secp384r1": "nistp384", "secp521r1": "nistp521"}

INDEX_NAME = "index.json"
_INDEX_FORMAT = "trustplane-keystore"
_KEY_FILE_RE = re.compile(r"^[0-9a-f]{32}\.pem$")
_TMP_RE = re.compile(r"^\.index\.json\.[0-9a-f]{16}\.tmp$")


class KeystoreError(EngineError):
    """Codes: weak-key, invalid-key-size, invalid-label, key-not-found, key-ambiguous,
    key-import-invalid, keystore-full, storage-failed (a full or read-only disk), keystore-corrupt."""


def _err(code: str, message: str) -> KeystoreError:
    tags = {"weak-key": "invalid-value", "invalid-key-size": "invalid-value",
            "invalid-label": "invalid-value", "key-not-found": "data-missing",
            "key-ambiguous": "invalid-value", "key-import-invalid": "invalid-value",
            "keystore-full": "resource-denied"}
    return KeystoreError(code, message, tags.get(code))


def _label_text(label: str) -> str:
    """A label as error messages show it: quoted and cut short."""
    shown = label if len(label) <= 64 else label[:61] + "..."
    return repr(shown)


@dataclass(frozen=True)
class KeyInfo:
    family: str            # rsa | ecdsa | ed25519 | rsa-authentication
    label: str
    usage: str             # general | signature | encryption | authentication
    size: int              # RSA modulus bits; curve bits; 256 for Ed25519
    curve: str | None      # nistp256 | nistp384 | nistp521 for ecdsa
    created: datetime
    public_der: bytes = field(repr=False)  # SubjectPublicKeyInfo DER

    def public_key(self):
        return serialization.load_der_public_key(self.public_der)

    def data_bytes(self) -> bytes:
        """What IOS XR prints under "Data :": the SubjectPublicKeyInfo for RSA, the bare
        public point for the elliptic-curve families (32 bytes for Ed25519 in the seed)."""
        if self.family == "ed25519":
            return self.public_key().public_bytes(serialization.Encoding.Raw,
                                                  serialization.PublicFormat.Raw)
        if self.family == "ecdsa":
            return self.public_key().public_bytes(serialization.Encoding.X962,
                                                  serialization.PublicFormat.UncompressedPoint)
        return self.public_der

    def data_hex(self) -> str:
        text = self.data_bytes().hex().upper()
        groups = [text[i:i + 8] for i in range(0, len(text), 8)]
        return "\n".join(" ".join(groups[i:i + 8]) for i in range(0, len(groups), 8))

    def type_text(self) -> str:
        if self.family == "rsa":
            return {"general": "RSA General purpose", "signature": "RSA Usage (signature)",
                    "encryption": "RSA Usage (encryption)"}[self.usage]
        if self.family == "rsa-authentication":
            return "RSA public key used for authentication"
        if self.family == "ecdsa":
            return f"ECDSA General Curve {self.curve.capitalize()}"
        return "ED25519"


@dataclass
class _Record:
    info: KeyInfo
    file: str | None       # key file name in the directory; None for public-only keys

    @property
    def ident(self) -> tuple:
        return (self.info.family, self.info.label, self.info.usage, self.info.curve or "")


def _check_label(label) -> str:
    if not isinstance(label, str) or not 1 <= len(label) <= MAX_LABEL:
        raise _err("invalid-label", f"a key label is 1..{MAX_LABEL} characters")
    if "\x00" in label:
        raise _err("invalid-label", "a key label cannot contain NUL")
    return label


def _utc(now: datetime) -> datetime:
    if not isinstance(now, datetime):
        raise TypeError("now must be a datetime")
    return now.replace(tzinfo=timezone.utc) if now.tzinfo is None else now.astimezone(timezone.utc)


def _spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def _write_new(path: Path, data: bytes) -> None:
    """Create path (it must not exist yet) readable by the owner only, write data and sync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _erase(path: Path) -> None:
    """Overwrite a file with random bytes of the same length, sync, then unlink."""
    try:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return
    try:
        size = os.fstat(fd).st_size
        written = 0
        while written < size:
            n = os.write(fd, os.urandom(min(size - written, MAX_KEY_FILE)))
            if n <= 0:
                raise OSError(5, "short write while erasing a key file")
            written += n
        os.fsync(fd)
    finally:
        os.close(fd)
    os.unlink(path)


class Keystore:
    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._lock = threading.Lock()
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if os.stat(self.directory).st_mode & 0o777 != 0o700:  # a read-only disk allows no chmod
                os.chmod(self.directory, 0o700)
        except OSError as exc:
            raise _err("storage-failed", f"cannot write the key store: {exc.strerror}") from None
        self._records: dict[tuple, _Record] = self._load()
        self._sweep()

    # ---- public API -------------------------------------------------------

    def generate_rsa(self, label: str, bits: int, *, usage_keys: bool = False,
                     now: datetime) -> list[KeyInfo]:
        label = _check_label(label)
        self._check_rsa_bits(bits)
        created = _utc(now)
        usages = ("signature", "encryption") if usage_keys else ("general",)
        # slow part, outside the lock
        pairs = [(u, rsa.generate_private_key(public_exponent=65537, key_size=bits))
                 for u in usages]
        new: list[_Record] = []
        try:
            for u, key in pairs:
                new.append(self._stage(key, KeyInfo("rsa", label, u, bits, None, created,
                                                    _spki(key.public_key()))))
        except BaseException:
            self._erase_files(new)
            raise
        self._commit(new, lambda r: r.info.family == "rsa" and r.info.label == label)
        log.info("generated RSA key%s %s, %d bits", "s" if usage_keys else "",
                 _label_text(label), bits)
        return [r.info for r in new]

    def generate_dsa(self, label: str, bits: int = 1024, *, now: datetime) -> list[KeyInfo]:
        """IOS XR's `crypto key generate dsa`: always refused here."""
        _check_label(label)
        raise _err("weak-key",
                   f"DSA keys ({bits} bits requested) are refused: IOS XR allows key sizes "
                   f"{IOS_XR_RSA_RANGE[0]}..{IOS_XR_RSA_RANGE[1]} but this device refuses "
                   f"keys below {MIN_RSA_BITS}-bit RSA strength; use rsa, ecdsa or ed25519")

    def generate_ecdsa(self, label: str, curve: str, *, now: datetime) -> KeyInfo:
        label = _check_label(label)
        if curve not in CURVES:
            raise _err("invalid-key-size",
                       f"unknown ECDSA curve {curve!r}: use one of {', '.join(CURVES)}")
        cls, bits = CURVES[curve]
        created = _utc(now)
        key = ec.generate_private_key(cls())
        rec = self._stage(key, KeyInfo("ecdsa", label, "general", bits, curve, created,
                                       _spki(key.public_key())))
        self._commit([rec], lambda r: r.ident == rec.ident)
        log.info("generated ECDSA %s key %s", curve, _label_text(label))
        return rec.info

    def generate_ed25519(self, label: str, *, now: datetime) -> KeyInfo:
        label = _check_label(label)
        created = _utc(now)
        key = ed25519.Ed25519PrivateKey.generate()
        rec = self._stage(key, KeyInfo("ed25519", label, "general", 256, None, created,
                                       _spki(key.public_key())))
        self._commit([rec], lambda r: r.ident == rec.ident)
        log.info("generated Ed25519 key %s", _label_text(label))
        return rec.info

    def import_authentication_rsa(self, data: bytes, label: str, *, now: datetime) -> KeyInfo:
        label = _check_label(label)
        public_key = _load_rsa_public(data)
        bits = public_key.key_size
        if bits < MIN_RSA_BITS:
            raise _err("weak-key", f"the imported RSA key has {bits} bits: IOS XR allows "
                       f"{IOS_XR_RSA_RANGE[0]}..{IOS_XR_RSA_RANGE[1]} but this device refuses "
                       f"keys below {MIN_RSA_BITS} bits")
        if bits > MAX_IMPORT_RSA_BITS:
            raise _err("invalid-key-size", f"the imported RSA key has {bits} bits; "
                       f"the most accepted is {MAX_IMPORT_RSA_BITS}")
        rec = _Record(KeyInfo("rsa-authentication", label, "authentication", bits, None,
                              _utc(now), _spki(public_key)), None)
        self._commit([rec], lambda r: r.ident == rec.ident)
        log.info("imported RSA authentication key %s, %d bits", _label_text(label), bits)
        return rec.info

    def zeroize(self, family: str, label: str | None = None, *,
                curve: str | None = None) -> list[KeyInfo]:
        if label is not None:
            _check_label(label)

        def doomed(r: _Record) -> bool:
            return (r.info.family == family and (label is None or r.info.label == label)
                    and (curve is None or r.info.curve == curve))

        with self._lock:
            gone = [r for r in self._records.values() if doomed(r)]
            if not gone:
                what = f"{family} key {_label_text(label)}" if label is not None else f"{family} keys"
                raise _err("key-not-found", f"no {what}{' on ' + curve if curve else ''} to zeroize")
            kept = {k: r for k, r in self._records.items() if not doomed(r)}
            self._write_index(kept)
            self._records = kept
            self._erase_files(gone)
        log.info("zeroized %d %s key(s)", len(gone), family)
        return sorted((r.info for r in gone), key=_sort_key)

    def keys(self) -> list[KeyInfo]:
        with self._lock:
            return sorted((r.info for r in self._records.values()), key=_sort_key)

    def find(self, family: str, label: str, *, curve: str | None = None) -> list[KeyInfo]:
        with self._lock:
            found = [r.info for r in self._records.values()
                     if r.info.family == family and r.info.label == label
                     and (curve is None or r.info.curve == curve)]
        return sorted(found, key=_sort_key)

    def private_key(self, family: str, label: str, *, usage: str = "general",
                    curve: str | None = None):
        with self._lock:
            found = [r for r in self._records.values()
                     if r.info.family == family and r.info.label == label
                     and r.info.usage == usage and (curve is None or r.info.curve == curve)
                     and r.file is not None]
            if len(found) > 1:
                curves = ", ".join(sorted(r.info.curve or "" for r in found))
                raise _err("key-ambiguous", f"{family} key {_label_text(label)} exists on "
                           f"several curves ({curves}); name the curve")
            if not found:
                raise _err("key-not-found",
                           f"no {family} {usage} private key {_label_text(label)}")
            pem = self._read_key_file(found[0].file)
        try:
            return serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError):
            raise _err("keystore-corrupt",
                       f"the {family} key {_label_text(label)} cannot be read") from None

    # ---- internals --------------------------------------------------------

    @staticmethod
    def _check_rsa_bits(bits) -> None:
        if not isinstance(bits, int) or isinstance(bits, bool):
            raise _err("invalid-key-size", "the RSA modulus size must be a whole number of bits")
        if bits < MIN_RSA_BITS:
            raise _err("weak-key", f"an RSA modulus of {bits} bits is too weak: IOS XR allows "
                       f"{IOS_XR_RSA_RANGE[0]}..{IOS_XR_RSA_RANGE[1]} bits but this device "
                       f"refuses below {MIN_RSA_BITS}")
        if bits > MAX_RSA_BITS or bits % 8:
            raise _err("invalid-key-size", f"an RSA modulus of {bits} bits is not supported: "
                       f"use {MIN_RSA_BITS}..{MAX_RSA_BITS} bits, a multiple of 8")

    def _stage(self, key, info: KeyInfo) -> _Record:
        """Write the private key to a new file that no index entry names yet."""
        name = secrets.token_hex(16) + ".pem"
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        path = self.directory / name
        try:
            _write_new(path, pem)
        except OSError as exc:
            self._erase_files([_Record(info, name)])  # a part of a private key must not stay behind
            raise _err("storage-failed", f"cannot write the key store: {exc.strerror}") from None
        return _Record(info, name)

    def _commit(self, new: list[_Record], replaces) -> None:
        """Put staged records in the index in place of those `replaces` selects."""
        committed = False
        try:
            with self._lock:
                old = [r for r in self._records.values() if replaces(r)]
                merged = {k: r for k, r in self._records.items() if not replaces(r)}
                for r in new:
                    merged[r.ident] = r
                if len(merged) > MAX_KEYS:
                    raise _err("keystore-full", f"the key store holds at most {MAX_KEYS} keys")
                try:
                    _fsync_dir(self.directory)   # the new key files' directory entries
                except OSError as exc:
                    raise _err("storage-failed", f"cannot write the key store: {exc.strerror}") from None
                self._write_index(merged)
                self._records = merged
                committed = True
                self._erase_files(old)
        except BaseException:
            if not committed:
                self._erase_files(new)
            raise

    def _erase_files(self, records: list[_Record]) -> None:
        for r in records:
            if r.file is None:
                continue
            try:
                _erase(self.directory / r.file)
            except OSError as exc:
                # the index no longer names it; the next sweep retries
                log.warning("could not erase a retired key file: %s", exc.strerror)

    def _read_key_file(self, name: str) -> bytes:
        try:
            fd = os.open(self.directory / name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            with os.fdopen(fd, "rb") as f:
                data = f.read(MAX_KEY_FILE + 1)
        except OSError:
            raise _err("keystore-corrupt", "a key file named by the index is missing") from None
        if len(data) > MAX_KEY_FILE:
            raise _err("keystore-corrupt", "a key file is larger than any key")
        return data

    def _write_index(self, records: dict[tuple, _Record]) -> None:
        doc = {"format": _INDEX_FORMAT, "version": 1,
               "keys": [_record_json(r) for r in sorted(records.values(),
                                                         key=lambda r: _sort_key(r.info))]}
        data = json.dumps(doc, indent=1, sort_keys=True).encode()
        tmp = self.directory / f".index.json.{secrets.token_hex(8)}.tmp"
        try:
            _write_new(tmp, data)
            os.replace(tmp, self.directory / INDEX_NAME)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise _err("storage-failed", f"cannot write the key store: {exc.strerror}") from None
        try:
            _fsync_dir(self.directory)
        except OSError as exc:
            # the index is replaced and names the new files: the change stands, only its
            # durability at a power loss is in doubt
            log.warning("cannot sync the key store directory: %s", exc.strerror)

    def _load(self) -> dict[tuple, _Record]:
        path = self.directory / INDEX_NAME
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_INDEX + 1)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise _err("keystore-corrupt", f"cannot read the key store index: {exc.strerror}") from None
        if len(raw) > MAX_INDEX:
            raise _err("keystore-corrupt", "the key store index is too large")
        try:
            doc = json.loads(raw)
            if doc.get("format") != _INDEX_FORMAT or doc.get("version") != 1:
                raise ValueError("unknown index format")
            entries = doc["keys"]
            if not isinstance(entries, list) or len(entries) > MAX_KEYS:
                raise ValueError("bad key list")
            records = {}
            for entry in entries:
                r = _record_from_json(entry)
                records[r.ident] = r
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
            raise _err("keystore-corrupt", "the key store index is not valid") from None
        return records

    def _sweep(self) -> None:
        """Erase key files no index entry names, and stale index temp files."""
        named = {r.file for r in self._records.values() if r.file}
        try:
            with os.scandir(self.directory) as it:
                for n, entry in enumerate(it):
                    if n >= MAX_DIR_ENTRIES:
                        break
                    if _KEY_FILE_RE.match(entry.name) and entry.name not in named:
                        log.warning("erasing a key file left by an interrupted write")
                        _erase(Path(entry.path))
                    elif _TMP_RE.match(entry.name):
                        os.unlink(entry.path)
        except OSError as exc:
            log.warning("key store sweep failed: %s", exc.strerror)


def _sort_key(info: KeyInfo) -> tuple:
    return (info.family, info.label, info.usage, info.curve or "")


def _record_json(r: _Record) -> dict:
    i = r.info
    return {"family": i.family, "label": i.label, "usage": i.usage, "size": i.size,
            "curve": i.curve, "created": i.created.isoformat(),
            "public": base64.b64encode(i.public_der).decode(), "file": r.file}


def _record_from_json(entry: dict) -> _Record:
    family, usage, curve, file = entry["family"], entry["usage"], entry["curve"], entry["file"]
    if family not in FAMILIES or usage not in USAGES:
        raise ValueError("bad family or usage")
    if curve is not None and curve not in CURVES:
        raise ValueError("bad curve")
    if file is not None and not (isinstance(file, str) and _KEY_FILE_RE.match(file)):
        raise ValueError("bad file name")
    if (file is None) != (family == "rsa-authentication"):
        raise ValueError("file presence does not match the family")
    label, size = entry["label"], entry["size"]
    if not isinstance(label, str) or not isinstance(size, int):
        raise ValueError("bad label or size")
    _check_label(label)
    created = datetime.fromisoformat(entry["created"])
    public_der = base64.b64decode(entry["public"], validate=True)
    return _Record(KeyInfo(family, label, usage, size, curve, created, public_der), file)


def _load_rsa_public(data: bytes) -> rsa.RSAPublicKey:
    """An RSA public key from PEM (SPKI or PKCS#1), DER (either) or an OpenSSH line."""
    if isinstance(data, str):
        data = data.encode()
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise _err("key-import-invalid", "no public key data")
    if len(data) > MAX_IMPORT:
        raise _err("key-import-invalid", f"public key data is larger than {MAX_IMPORT} bytes")
    data = bytes(data)
    text = data.strip()
    if b"PRIVATE KEY" in text:
        # never echo it back, and do not keep it
        raise _err("key-import-invalid", "this is a private key; import the public key only")
    try:
        if text.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(text)
        elif text.startswith(b"ssh-"):
            key = serialization.load_ssh_public_key(text.splitlines()[0])
        else:
            key = serialization.load_der_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if key is None:
        raise _err("key-import-invalid",
                   "not a public key in PEM, DER or OpenSSH form")
    if not isinstance(key, rsa.RSAPublicKey):
        raise _err("key-import-invalid", "only RSA public keys can be imported for authentication")
    return key
