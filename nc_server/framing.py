"""RFC 6242 message framing as a sans-IO state machine.

Bytes go in with `Decoder.feed`, whole messages come out of `next_message`.
A session starts in end-of-message framing (base:1.0) and switches to chunked
framing (base:1.1) once both hellos carry base:1.1; bytes already received
after the hello are then read as chunks.
"""
from __future__ import annotations

import re
from collections import deque

DEFAULT_MAX_MESSAGE = 32 * 1024 * 1024
EOM = b"]]>]]>"
END_OF_CHUNKS = b"\n##\n"
MAX_CHUNK_SIZE = 4294967295  # RFC 6242 §4.2
# "\n#" + at most 10 digits + "\n"
_MAX_HEADER = 13
_CHUNK_HEADER = re.compile(rb"\n#([1-9][0-9]{0,9})\n")


class FramingError(Exception):
    """The peer broke the framing; the session must be closed."""


class Decoder:
    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE):
        self.max_message = max_message
        self.chunked = False
        self._buf = bytearray()
        self._messages: deque[bytes] = deque()
        self._scanned = 0  # EOM mode: bytes of _buf already searched for the delimiter
        self._parts: list[bytes] = []  # chunked mode: chunks of the current message
        self._size = 0  # chunked mode: bytes in _parts

    @property
    def pending(self) -> int:
        """Bytes received that are not yet part of a complete message."""
        return len(self._buf) + self._size

    def feed(self, data: bytes) -> None:
        self._buf += data
        if self.chunked:
            self._parse_chunks()
        else:
            self._find_eom()

    def next_message(self) -> bytes | None:
        # end-of-message framing is split one message at a time: what follows
        # the hello may already be chunked
        at = -1 if self._messages or self.chunked else self._find_eom()
        if at >= 0:
            self._messages.append(bytes(self._buf[:at]))
            del self._buf[:at + len(EOM)]
            self._scanned = 0
        return self._messages.popleft() if self._messages else None

    def switch_to_chunked(self) -> None:
        self.chunked = True
        self._parse_chunks()

    def eof(self) -> None:
        """The peer closed its side: anything but whitespace left over is a truncated message."""
        if self._parts or self._buf.strip():
            raise FramingError(f"connection closed in the middle of a message ({self.pending} bytes pending)")

    def _find_eom(self) -> int:
        at = self._buf.find(EOM, max(0, self._scanned - len(EOM) + 1))
        if at < 0:
            self._scanned = len(self._buf)
            if len(self._buf) > self.max_message + len(EOM):
                raise FramingError(f"message larger than {self.max_message} bytes")
        elif at > self.max_message:
            raise FramingError(f"message larger than {self.max_message} bytes")
        else:
            self._scanned = at
        return at

    def _parse_chunks(self) -> None:
        buf = self._buf
        pos = 0
        try:
            while pos < len(buf):
                if buf[pos:pos + 4] == END_OF_CHUNKS:
                    if not self._parts:
                        raise FramingError("end-of-chunks marker without any chunk")
                    self._messages.append(b"".join(self._parts))
                    self._parts, self._size = [], 0
                    pos += 4
                    continue
                m = _CHUNK_HEADER.match(buf, pos)
                if m is None:
                    # an incomplete header is fine if it can still become a valid one
                    head = bytes(buf[pos:pos + _MAX_HEADER])
                    if b"\n" in head[2:] or len(head) >= _MAX_HEADER or not _header_prefix(head):
                        raise FramingError(f"bad chunk header {head[:_MAX_HEADER]!r}")
                    break
                size = int(m.group(1))
                if size > MAX_CHUNK_SIZE:
                    raise FramingError(f"chunk size {size} out of range")
                if self._size + size > self.max_message:
                    raise FramingError(f"message larger than {self.max_message} bytes")
                start = m.end()
                if len(buf) - start < size:
                    break
                self._parts.append(bytes(buf[start:start + size]))
                self._size += size
                pos = start + size
        finally:
            del buf[:pos]


def _header_prefix(head: bytes) -> bool:
    """Whether head is the start of a chunk header or of the end-of-chunks marker."""
    if not head.startswith(b"\n#"[:len(head)]):
        return False
    rest = head[2:]
    if rest.startswith(b"#"):
        return len(rest) == 1
    return rest == b"" or (rest.isdigit() and not rest.startswith(b"0"))


def encode(message: bytes, chunked: bool, max_chunk: int | None = None) -> bytes:
    """Frame one message; max_chunk splits chunked output into several chunks."""
    if not chunked:
        return message + EOM
    if not message:
        raise ValueError("chunked framing cannot carry an empty message")
    if max_chunk is None or len(message) <= max_chunk:
        return b"\n#%d\n" % len(message) + message + END_OF_CHUNKS
    out = bytearray()
    for i in range(0, len(message), max_chunk):
        piece = message[i:i + max_chunk]
        out += b"\n#%d\n" % len(piece)
        out += piece
    return bytes(out + END_OF_CHUNKS)
