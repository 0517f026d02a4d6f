"""A lean NETCONF client over asyncssh for the benchmarks.

Stock ncclient sleeps between polls and leaves Nagle on, so it would measure
itself. This client speaks base:1.1 chunked framing (or base:1.0 if the server
only offers that) and sends each RPC as soon as the previous reply is read.
"""
from __future__ import annotations

import re
import time

import asyncssh

NC = "urn:ietf:params:xml:ns:netconf:base:1.0"
HELLO = (f'<hello xmlns="{NC}"><capabilities><capability>urn:ietf:params:netconf:base:1.0</capability>'
         "<capability>urn:ietf:params:netconf:base:1.1</capability></capabilities></hello>]]>]]>").encode()
_HEADER = re.compile(rb"\n#(\d+|#)\n")


class Client:
    def __init__(self, host: str, port: int, username: str, password: str):
        self.host, self.port, self.username, self.password = host, port, username, password
        self.message_id = 0
        self.buf = bytearray()
        self.chunked = False

    async def connect(self) -> "Client":
        self.conn = await asyncssh.connect(self.host, self.port, username=self.username, password=self.password,
                                           known_hosts=None, client_keys=None, agent_path=None,
                                           preferred_auth="password")
        self.writer, self.reader, _ = await self.conn.open_session(subsystem="netconf", encoding=None)
        self.writer.write(HELLO)
        server_hello = await self._read_eom()
        self.chunked = b"urn:ietf:params:netconf:base:1.1" in server_hello
        return self

    async def close(self) -> None:
        await self.rpc(f'<close-session xmlns="{NC}"/>')
        self.conn.close()
        await self.conn.wait_closed()

    def abort(self) -> None:
        self.conn.close()

    async def rpc(self, body: str) -> bytes:
        """Send one operation (XML text) and return the whole rpc-reply."""
        self.message_id += 1
        msg = f'<rpc message-id="{self.message_id}" xmlns="{NC}">{body}</rpc>'.encode()
        if self.chunked:
            self.writer.write(b"\n#%d\n%s\n##\n" % (len(msg), msg))
            return await self._read_chunked()
        self.writer.write(msg + b"]]>]]>")
        return await self._read_eom()

    async def timed(self, body: str) -> float:
        """The seconds one operation takes; an rpc-error in its reply is a RuntimeError."""
        t = time.perf_counter()
        reply = await self.rpc(body)
        elapsed = time.perf_counter() - t
        if b"<rpc-error" in reply:
            raise RuntimeError(reply.decode(errors="replace")[:300])
        return elapsed

    async def _more(self) -> None:
        data = await self.reader.read(1 << 20)
        if not data:
            raise ConnectionError("server closed the session")
        self.buf += data

    async def _read_eom(self) -> bytes:
        while (at := self.buf.find(b"]]>]]>")) < 0:
            await self._more()
        msg = bytes(self.buf[:at])
        del self.buf[:at + 6]
        return msg

    async def _read_chunked(self) -> bytes:
        parts = []
        while True:
            while (m := _HEADER.match(self.buf)) is None:
                await self._more()
            if m.group(1) == b"#":
                del self.buf[:m.end()]
                return b"".join(parts)
            size = int(m.group(1))
            while len(self.buf) < m.end() + size:
                await self._more()
            parts.append(bytes(self.buf[m.end():m.end() + size]))
            del self.buf[:m.end() + size]


async def connect(host: str, port: int, username: str, password: str) -> Client:
    return await Client(host, port, username, password).connect()
