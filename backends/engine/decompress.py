"""Decompression with bounds: every reader stops at a limit on what it gives out, and the
decoders whose memory depends on the input (xz's dictionary, zstd's window) have a
memory limit, so a small input cannot make the server allocate or write gigabytes.
"""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
from typing import BinaryIO

import zstandard

from .errors import EngineError

XZ_MEMLIMIT = 128 * 1024 * 1024  # xz -9 needs 65 MiB to decompress
ZSTD_MAX_WINDOW = 128 * 1024 * 1024  # zstd's own default; --long=31 frames need 2 GiB
_CHUNK = 1 << 16

# what a decoder raises on damaged input
ERRORS = (OSError, EOFError, lzma.LZMAError, zstandard.ZstdError)


class TooLarge(EngineError):
    """More output than the limit, or a decoder that needs more memory than allowed."""

    def __init__(self, message: str):
        super().__init__("too-large", message, "too-big")


class _Xz(io.RawIOBase):
    """xz or lzma data with a memory limit (LZMAFile has none); concatenated streams go on."""

    def __init__(self, f: BinaryIO):
        self.f = f
        self.d = self._decoder()

    @staticmethod
    def _decoder() -> lzma.LZMADecompressor:
        return lzma.LZMADecompressor(memlimit=XZ_MEMLIMIT)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self._read(len(b))
        b[:len(data)] = data
        return len(data)

    def _read(self, n: int) -> bytes:
        while n:
            if self.d.eof:
                more = self.d.unused_data or self.f.read(_CHUNK)
                if not more:
                    return b""
                self.d = self._decoder()
            elif self.d.needs_input:
                more = self.f.read(_CHUNK)
                if not more:
                    raise EOFError("the compressed data ends before its end marker")
            else:
                more = b""
            try:
                data = self.d.decompress(more, n)
            except lzma.LZMAError as exc:
                if "memory usage limit" in str(exc).lower():
                    raise TooLarge(f"the xz data needs more than {XZ_MEMLIMIT} bytes of memory "
                                   "to decompress") from None
                raise
            if data:
                return data
        return b""


class _Zstd(io.RawIOBase):
    def __init__(self, f: BinaryIO):
        self.r = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).stream_reader(
            f, closefd=False, read_across_frames=True)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        try:
            return self.r.readinto(b)
        except zstandard.ZstdError as exc:
            if "too much memory" in str(exc).lower() or "window" in str(exc).lower():
                raise TooLarge(f"the zstd data needs a window over {ZSTD_MAX_WINDOW} bytes") from None
            raise


OPENERS = {
    "gzip": lambda f: gzip.GzipFile(fileobj=f, mode="rb"),
    "bzip2": lambda f: bz2.BZ2File(f),  # bzip2 needs under 4 MiB whatever its input
    "xz": lambda f: io.BufferedReader(_Xz(f)),
    "lzma": lambda f: io.BufferedReader(_Xz(f)),
    "zstd": lambda f: io.BufferedReader(_Zstd(f)),
}
MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}


def sniff(head: bytes) -> str | None:
    """The compression that data starting with head uses, None for none known."""
    return next((name for magic, name in MAGIC.items() if head.startswith(magic)), None)


class Bounded(io.RawIOBase):
    """A reader that raises TooLarge once more than limit bytes have been read through it."""

    def __init__(self, f: BinaryIO, limit: int):
        self.f, self.limit, self.count = f, limit, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self.f.readinto(memoryview(b)[:self.limit + 1 - self.count])
        self.count += n
        if self.count > self.limit:
            raise TooLarge(f"the data is over {self.limit} bytes decompressed")
        return n
