"""Reading RPM packages (format v3 lead, v4 headers, cpio "newc" payload).

Reads the signature header and the main header, checks the header and
payload digests the signature header and the header carry, and streams the
payload's files with their content checked against the header's file digests.
Every length read from the file is bounded before it is used.
"""
from __future__ import annotations

import hashlib
import stat
import struct
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

from . import openpgp
from .. import decompress
from ..errors import EngineError

LEAD_MAGIC = b"\xed\xab\xee\xdb"
HEADER_MAGIC = b"\x8e\xad\xe8\x01"
MAX_HEADER_ENTRIES = 65536
MAX_HEADER_STORE = 64 * 1024 * 1024
MAX_FILES = 100_000
MAX_NAME = 4096
DEFAULT_MAX_PAYLOAD = 2 * 1024 ** 3  # uncompressed, the cpio archive whole
MAX_FILE_SIZE = 1024 ** 3  # one file's content

# header tags (rpmtag.h numbers)
NAME, VERSION, RELEASE, EPOCH, SUMMARY, ARCH = 1000, 1001, 1002, 1003, 1004, 1022
FILESIZES, FILEMODES, FILEDIGESTS, FILELINKTOS, FILEFLAGS = 1028, 1030, 1035, 1036, 1037
SOURCERPM, DIRINDEXES, BASENAMES, DIRNAMES = 1044, 1116, 1117, 1118
PAYLOADFORMAT, PAYLOADCOMPRESSOR = 1124, 1125
FILEDIGESTALGO, PAYLOADDIGEST, PAYLOADDIGESTALGO = 5011, 5092, 5093
# signature header tags
SIG_DSAHEADER, SIG_RSAHEADER, SIG_SHA256, SIG_PGP, SIG_GPG = 267, 268, 273, 1002, 1005
SIG_LONGARCHIVESIZE, SIG_PAYLOADSIZE = 271, 1007
RPMFILE_GHOST = 1 << 6

DIGEST_ALGOS = {1: "md5", 2: "sha1", 8: "sha256", 9: "sha384", 10: "sha512", 11: "sha224"}
DECOMPRESSORS = decompress.OPENERS


class RpmError(EngineError):
    """code: not-an-rpm, rpm-corrupt, rpm-unsupported or rpm-too-large."""


@dataclass(frozen=True)
class FileEntry:
    path: str  # absolute, as installed
    mode: int  # st_mode with the type bits
    size: int
    digest: str  # header's file digest (hex), "" for non-regular files
    link_to: str
    ghost: bool


@dataclass
class RpmPackage:
    name: str
    version: str
    release: str
    epoch: int | None
    arch: str
    summary: str
    gpg_key_id: str  # 16 hex digits of the signing key, "0" when unsigned
    files: list[FileEntry]
    header_blob: bytes = field(repr=False)  # the main header as signed
    header_signature: bytes | None = field(repr=False)  # OpenPGP signature over header_blob
    payload_offset: int = 0
    compressor: str = "gzip"
    file_digest_algo: str = "md5"
    payload_digest: str | None = None
    payload_digest_algo: str = "sha256"
    payload_size: int | None = None

    @property
    def nvra(self) -> str:
        return f"{self.name}-{self.version}-{self.release}.{self.arch}"


def _read_exact(f: BinaryIO, n: int, what: str) -> bytes:
    data = f.read(n)
    while len(data) < n:  # decompressing readers may return short reads
        more = f.read(n - len(data))
        if not more:
            raise RpmError("rpm-corrupt", f"truncated {what}")
        data += more
    return data


def _read_header(f: BinaryIO, what: str) -> tuple[dict[int, object], bytes]:
    intro = _read_exact(f, 16, what)
    if intro[:4] != HEADER_MAGIC:
        raise RpmError("rpm-corrupt", f"bad {what} magic")
    nindex, hsize = struct.unpack(">II", intro[8:])
    if nindex > MAX_HEADER_ENTRIES or hsize > MAX_HEADER_STORE:
        raise RpmError("rpm-corrupt", f"{what} too large ({nindex} entries, {hsize} bytes)")
    index = _read_exact(f, 16 * nindex, what)
    store = _read_exact(f, hsize, what)
    tags: dict[int, object] = {}
    for i in range(nindex):
        tag, typ, off, count = struct.unpack_from(">IIII", index, 16 * i)
        tags[tag] = _value(store, typ, off, count, what)
    return tags, intro + index + store


def _value(store: bytes, typ: int, off: int, count: int, what: str):
    if off > len(store) or count > len(store) + 1:
        raise RpmError("rpm-corrupt", f"{what}: entry outside its store")
    sizes = {2: ("B", 1), 3: (">H", 2), 4: (">I", 4), 5: (">Q", 8)}
    if typ in sizes:
        fmt, width = sizes[typ]
        if off + width * count > len(store):
            raise RpmError("rpm-corrupt", f"{what}: entry outside its store")
        return list(struct.unpack_from(f">{count}{fmt[-1]}", store, off))
    if typ == 7:  # BIN
        if off + count > len(store):
            raise RpmError("rpm-corrupt", f"{what}: entry outside its store")
        return store[off:off + count]
    if typ in (6, 8, 9):  # STRING, STRING_ARRAY, I18NSTRING
        items, pos = [], off
        for _ in range(1 if typ == 6 else count):
            end = store.find(b"\0", pos)
            if end < 0:
                raise RpmError("rpm-corrupt", f"{what}: unterminated string")
            items.append(store[pos:end].decode("utf-8", "replace"))
            pos = end + 1
        return items[0] if typ == 6 else items
    return None  # NULL and CHAR carry nothing we use


def read_package(f: BinaryIO) -> RpmPackage:
    """Parse the lead and both headers and check the header digest. f is left at the payload."""
    lead = f.read(96)
    if len(lead) < 96 or lead[:4] != LEAD_MAGIC:
        raise RpmError("not-an-rpm", "not an RPM package (no RPM lead)")
    if lead[4] < 3:
        raise RpmError("rpm-unsupported", f"RPM format version {lead[4]} is not supported")
    sig, sig_blob = _read_header(f, "signature header")
    pad = (8 - len(sig_blob) % 8) % 8
    _read_exact(f, pad, "signature header padding")
    tags, blob = _read_header(f, "header")

    want = sig.get(SIG_SHA256)
    if isinstance(want, str) and hashlib.sha256(blob).hexdigest() != want.lower():
        raise RpmError("rpm-corrupt", "header digest mismatch: the package is corrupt or was altered")
    header_sig = sig.get(SIG_RSAHEADER) or sig.get(SIG_DSAHEADER)
    any_sig = header_sig or sig.get(SIG_PGP) or sig.get(SIG_GPG)
    try:
        key_id = openpgp.parse_signature(any_sig).issuer if isinstance(any_sig, bytes) else "0"
    except openpgp.OpenPGPError as exc:
        raise RpmError("rpm-corrupt", f"package signature: {exc}") from None

    def text(tag, default=""):
        v = tags.get(tag, default)
        return v if isinstance(v, str) else default

    name = text(NAME)
    if not name or not text(VERSION):
        raise RpmError("rpm-corrupt", "the header has no name or version")
    if SOURCERPM not in tags:
        raise RpmError("rpm-unsupported", f"{name} is a source package")
    if text(PAYLOADFORMAT, "cpio") != "cpio":
        raise RpmError("rpm-unsupported", f"payload format {text(PAYLOADFORMAT)!r} is not supported")
    compressor = text(PAYLOADCOMPRESSOR, "gzip")
    if compressor not in DECOMPRESSORS:
        raise RpmError("rpm-unsupported", f"payload compressor {compressor!r} is not supported")
    algo = DIGEST_ALGOS.get((tags.get(FILEDIGESTALGO) or [1])[0])
    if algo is None:
        raise RpmError("rpm-unsupported", "unknown file digest algorithm")
    epoch = tags.get(EPOCH)
    pdigest = tags.get(PAYLOADDIGEST)
    palgo = DIGEST_ALGOS.get((tags.get(PAYLOADDIGESTALGO) or [8])[0], "sha256")
    size = (sig.get(SIG_LONGARCHIVESIZE) or sig.get(SIG_PAYLOADSIZE) or [None])[0]
    return RpmPackage(
        name=name, version=text(VERSION), release=text(RELEASE), epoch=epoch[0] if epoch else None,
        arch=text(ARCH, "noarch"), summary=text(SUMMARY), gpg_key_id=key_id, files=_files(tags, algo),
        header_blob=blob, header_signature=header_sig if isinstance(header_sig, bytes) else None,
        payload_offset=f.tell(), compressor=compressor, file_digest_algo=algo,
        payload_digest=pdigest[0].lower() if pdigest else None, payload_digest_algo=palgo, payload_size=size)


def _files(tags: dict, algo: str) -> list[FileEntry]:
    basenames = tags.get(BASENAMES) or []
    if not basenames:
        return []
    n = len(basenames)
    if n > MAX_FILES:
        raise RpmError("rpm-unsupported", f"{n} files is more than the {MAX_FILES} supported")
    dirnames, dirindexes = tags.get(DIRNAMES) or [], tags.get(DIRINDEXES) or []
    modes, sizes = tags.get(FILEMODES) or [], tags.get(FILESIZES) or []
    digests, links = tags.get(FILEDIGESTS) or [""] * n, tags.get(FILELINKTOS) or [""] * n
    flags = tags.get(FILEFLAGS) or [0] * n
    if not (len(dirindexes) == len(modes) == len(sizes) == len(digests) == len(links) == len(flags) == n):
        raise RpmError("rpm-corrupt", "the header's file lists disagree in length")
    out = []
    if sum(sizes) > DEFAULT_MAX_PAYLOAD or any(s > MAX_FILE_SIZE for s in sizes):
        raise RpmError("rpm-too-large", f"the package's files are larger than {MAX_FILE_SIZE} bytes each "
                       f"or {DEFAULT_MAX_PAYLOAD} bytes in all")
    for i in range(n):
        if dirindexes[i] >= len(dirnames):
            raise RpmError("rpm-corrupt", "a file names a directory the header lacks")
        path = dirnames[dirindexes[i]] + basenames[i]
        if not path.startswith("/") or "\0" in path or "/../" in path + "/" or "/./" in path + "/":
            raise RpmError("rpm-corrupt", f"unsafe file path {path!r}")
        out.append(FileEntry(path, modes[i], sizes[i], digests[i].lower(), links[i], bool(flags[i] & RPMFILE_GHOST)))
    out.sort(key=lambda e: e.path.encode())
    return out


class _HashingReader:
    def __init__(self, f: BinaryIO, algo: str):
        self.f, self.h = f, hashlib.new(algo)

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.h.update(data)
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True


@dataclass
class PayloadItem:
    entry: FileEntry
    chunks: Iterator[bytes] | None  # content of a regular file, None otherwise


def payload(f: BinaryIO, pkg: RpmPackage, max_size: int = DEFAULT_MAX_PAYLOAD) -> Iterator[PayloadItem]:
    """The payload's entries in archive order. The content of each regular file is
    checked against the header's digest as it is consumed; the payload digest is
    checked at the end. Consumers must drain each item's chunks."""
    f.seek(pkg.payload_offset)
    raw = _HashingReader(f, pkg.payload_digest_algo)
    try:
        stream = DECOMPRESSORS[pkg.compressor](raw)
    except Exception as exc:
        raise RpmError("rpm-corrupt", f"payload: {exc}") from None
    by_path = {e.path: e for e in pkg.files}
    seen: set[str] = set()
    total = 0

    def read(n: int, what: str) -> bytes:
        nonlocal total
        total += n
        if total > max_size:
            raise RpmError("rpm-too-large", f"the payload is larger than {max_size} bytes")
        try:
            return _read_exact(stream, n, what)
        except decompress.TooLarge as exc:
            raise RpmError("rpm-too-large", f"payload: {exc}") from None
        except decompress.ERRORS as exc:
            raise RpmError("rpm-corrupt", f"payload: {exc}") from None

    while True:
        head = read(110, "payload")
        if head[:6] != b"070701":
            raise RpmError("rpm-corrupt" if head[:5] == b"07070" else "rpm-unsupported",
                           "payload is not a cpio newc archive")
        try:
            fields = [int(head[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        except ValueError:
            raise RpmError("rpm-corrupt", "bad cpio header") from None
        mode, filesize, namesize = fields[1], fields[6], fields[11]
        if namesize > MAX_NAME or namesize == 0:
            raise RpmError("rpm-corrupt", "bad cpio name length")
        name = read(namesize, "payload").rstrip(b"\0").decode("utf-8", "replace")
        read((4 - (110 + namesize) % 4) % 4, "payload")
        if name == "TRAILER!!!":
            break
        path = "/" + name.lstrip(".").lstrip("/")
        entry = by_path.get(path)
        if entry is None or path in seen:
            raise RpmError("rpm-corrupt", f"payload file {path!r} is not in the header, or appears twice")
        seen.add(path)
        if stat.S_IFMT(mode) != stat.S_IFMT(entry.mode):
            raise RpmError("rpm-corrupt", f"payload file {path!r} has a type the header does not give")
        if stat.S_ISREG(mode):
            if filesize != entry.size:
                raise RpmError("rpm-corrupt", f"payload file {path!r} has the wrong size")
            item = PayloadItem(entry, _content(read, filesize, entry, pkg.file_digest_algo))
            yield item
            for _ in item.chunks:  # whatever the consumer left unread
                pass
        else:
            if filesize > MAX_NAME:  # a link target; directories have no content
                raise RpmError("rpm-corrupt", f"payload entry {path!r} has {filesize} bytes of content")
            data = read(filesize, "payload")
            if stat.S_ISLNK(mode) and data.decode("utf-8", "replace") != entry.link_to:
                raise RpmError("rpm-corrupt", f"payload link {path!r} differs from the header")
            yield PayloadItem(entry, None)
        read((4 - filesize % 4) % 4, "payload")
    missing = [e.path for e in pkg.files if not e.ghost and e.path not in seen]
    if missing:
        raise RpmError("rpm-corrupt", f"payload lacks {len(missing)} file(s), first {missing[0]!r}")
    while raw.read(1 << 16):  # the payload digest covers every compressed byte
        pass
    if pkg.payload_digest and raw.h.hexdigest() != pkg.payload_digest:
        raise RpmError("rpm-corrupt", "payload digest mismatch: the package is corrupt or was altered")


def _content(read, size: int, entry: FileEntry, algo: str) -> Iterator[bytes]:
    h = hashlib.new(algo)
    left = size
    while left:
        chunk = read(min(left, 1 << 20), "payload")
        h.update(chunk)
        left -= len(chunk)
        yield chunk
    if entry.digest and h.hexdigest() != entry.digest:
        raise RpmError("rpm-corrupt", f"content of {entry.path!r} does not match the header digest")
