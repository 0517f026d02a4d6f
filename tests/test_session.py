"""The session layer over a raw SSH channel: hello, framing, message-id and
attributes, malformed and hostile XML, timeouts. The client is asyncssh with
hand-written bytes, so nothing smooths over what the server sends."""
import asyncio
import time
import re

import asyncssh
import pytest
from lxml import etree

from conftest import NC, PASSWORD, ServerProcess
from memory_server import MemoryServer

BASE10 = "urn:ietf:params:netconf:base:1.0"
BASE11 = "urn:ietf:params:netconf:base:1.1"


def hello(*caps: str) -> bytes:
    body = "".join(f"<capability>{c}</capability>" for c in caps)
    return f'<hello xmlns="{NC}"><capabilities>{body}</capabilities></hello>]]>]]>'.encode()


def chunk(msg: str | bytes) -> bytes:
    data = msg.encode() if isinstance(msg, str) else msg
    return b"\n#%d\n" % len(data) + data + b"\n##\n"


class Raw:
    """One netconf subsystem channel with a byte-level reader."""

    def __init__(self, srv: ServerProcess):
        self.srv = srv

    async def __aenter__(self):
        self.writer, self.reader = await self.open()
        self.buf = b""
        self.server_hello = await self.read_until(b"]]>]]>")
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def open(self):
        self.conn = await asyncssh.connect(self.srv.host, self.srv.port, username="admin", password=PASSWORD,
                                           known_hosts=None, client_keys=None)
        writer, reader, _ = await self.conn.open_session(subsystem="netconf", encoding=None)
        return writer, reader

    async def close(self):
        self.conn.close()
        await self.conn.wait_closed()

    async def read_until(self, marker: bytes, timeout=10.0) -> bytes:
        while marker not in self.buf:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise EOFError(self.buf)
            self.buf += data
        msg, self.buf = self.buf.split(marker, 1)
        return msg

    async def read_chunked(self) -> bytes:
        out = b""
        while True:
            while not re.match(rb"\n#(\d+|#)\n", self.buf):
                data = await asyncio.wait_for(self.reader.read(65536), 10)
                if not data:
                    raise EOFError(self.buf)
                self.buf += data
            m = re.match(rb"\n#(\d+|#)\n", self.buf)
            self.buf = self.buf[m.end():]
            if m.group(1) == b"#":
                return out
            size = int(m.group(1))
            while len(self.buf) < size:
                self.buf += await asyncio.wait_for(self.reader.read(65536), 10)
            out, self.buf = out + self.buf[:size], self.buf[size:]

    async def closed(self, timeout=10.0) -> bool:
        """True when the server closes the channel."""
        try:
            while True:
                data = await asyncio.wait_for(self.reader.read(65536), timeout)
                if not data:
                    return True
                self.buf += data
        except asyncio.TimeoutError:
            return False


class MemoryRaw(Raw):
    """The same byte-level client on a session of the in-process server."""

    async def open(self):
        self.channel = self.srv.channel()
        return await self.channel.open()

    async def close(self):
        await self.channel.close()


def raw(srv) -> Raw:
    return MemoryRaw(srv) if isinstance(srv, MemoryServer) else Raw(srv)


@pytest.fixture(scope="module")
def memory_server(tmp_path_factory):
    srv = MemoryServer(tmp_path_factory.mktemp("mem") / "state")
    yield srv
    srv.close()


@pytest.fixture(params=["ssh", "memory"])
def target(request):
    """The shared server over SSH, or the same session and dispatch code in this process."""
    return request.getfixturevalue("server" if request.param == "ssh" else "memory_server")


def run(coro):
    return asyncio.run(coro)


def run_on_own_server(tmp_path, args: list[str], go) -> str:
    """Run go(srv) against a server started with args; the server's log."""
    srv = ServerProcess(tmp_path / "state", *args).start()
    try:
        run(go(srv))
        return srv.log()
    finally:
        srv.stop()


def parse(msg: bytes):
    return etree.fromstring(msg)


def error_of(reply):
    err = reply.find(f"{{{NC}}}rpc-error")
    assert err is not None, etree.tostring(reply)
    return {etree.QName(c).localname: c for c in err}


def test_server_hello(server):
    async def go():
        async with Raw(server) as s:
            h = parse(s.server_hello)
            caps = [c.text for c in h.iter(f"{{{NC}}}capability")]
            for c in (BASE10, BASE11, "urn:ietf:params:netconf:capability:writable-running:1.0",
                      "urn:ietf:params:netconf:capability:candidate:1.0",
                      "urn:ietf:params:netconf:capability:confirmed-commit:1.1",
                      "urn:ietf:params:netconf:capability:rollback-on-error:1.0",
                      "urn:ietf:params:netconf:capability:validate:1.1",
                      "urn:ietf:params:netconf:capability:startup:1.0",
                      "urn:ietf:params:netconf:capability:xpath:1.0"):
                assert c in caps
            assert any(c.startswith("urn:trustplane:yang:trustplane-device?module=trustplane-device&revision=")
                       for c in caps)
            assert int(h.findtext(f"{{{NC}}}session-id")) > 0
    run(go())


def test_base10_end_of_message_framing(target):
    async def go():
        async with raw(target) as s:
            s.writer.write(hello(BASE10))
            s.writer.write(f'<rpc message-id="7" xmlns="{NC}"><get-config><source><running/></source>'
                           "</get-config></rpc>]]>]]>".encode())
            reply = parse(await s.read_until(b"]]>]]>"))
            assert reply.tag == f"{{{NC}}}rpc-reply" and reply.get("message-id") == "7"
            assert reply.find(f"{{{NC}}}data") is not None
    run(go())


def test_chunked_framing_and_attribute_echo(target):
    async def go():
        async with raw(target) as s:
            s.writer.write(hello(BASE10, BASE11))
            rpc = (f'<rpc message-id="m-1" xmlns="{NC}" xmlns:ex="urn:example" ex:user-attr="x" other="y">'
                   "<get-config><source><running/></source></get-config></rpc>")
            wire = chunk(rpc)
            for i in range(0, len(wire), 7):  # headers split across writes
                s.writer.write(wire[i:i + 7])
                await asyncio.sleep(0)
            reply = parse(await s.read_chunked())
            assert reply.get("message-id") == "m-1"
            assert reply.get("{urn:example}user-attr") == "x"
            assert reply.get("other") == "y"
    run(go())


@pytest.mark.parametrize("body,tag", [
    (f'<rpc xmlns="{NC}"><get/></rpc>', "missing-attribute"),
    (f'<rpc message-id="1" xmlns="{NC}"><frobnicate/></rpc>', "operation-not-supported"),
    (f'<rpc message-id="1" xmlns="{NC}"><get><bogus/></get></rpc>', "unknown-element"),
    (f'<rpc message-id="1" xmlns="{NC}"><x:op xmlns:x="urn:nowhere"/></rpc>', "operation-not-supported"),
    (f'<rpc message-id="1" xmlns="{NC}"><get></rpc>', "malformed-message"),
    ("<notxml", "malformed-message"),
    (f'<rpc message-id="1" xmlns="{NC}"/>', "missing-element"),
])
def test_bad_rpcs_get_errors_and_the_session_goes_on(target, body, tag):
    async def go():
        async with raw(target) as s:
            s.writer.write(hello(BASE11))
            s.writer.write(chunk(body))
            reply = parse(await s.read_chunked())
            err = error_of(reply)
            assert err["error-tag"].text == tag
            assert err["error-severity"].text == "error"
            assert err["error-type"].text in ("rpc", "protocol", "application")
            assert "Traceback" not in etree.tostring(reply).decode()
            s.writer.write(chunk(f'<rpc message-id="2" xmlns="{NC}"><get-config><source><running/></source>'
                                 "</get-config></rpc>"))
            assert parse(await s.read_chunked()).get("message-id") == "2"
    run(go())


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
<!ENTITY lol9 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">]>
<rpc message-id="1" xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><get-config><source><running/></source>
<filter type="xpath" select="&lol9;"/></get-config></rpc>"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<rpc message-id="1" xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><get-config><source><running/></source>
<filter type="xpath" select="&xxe;"/></get-config></rpc>"""


@pytest.mark.parametrize("doc", [BILLION_LAUGHS, EXTERNAL_ENTITY])
def test_hostile_xml_is_malformed_message(target, doc):
    async def go():
        async with raw(target) as s:
            s.writer.write(hello(BASE11))
            s.writer.write(chunk(doc))
            reply = await s.read_chunked()
            assert b"root:" not in reply and b"lollol" not in reply
            assert error_of(parse(reply))["error-tag"].text == "malformed-message"
    run(go())


def test_bad_chunk_header_closes_only_that_session(target):
    async def go():
        async with raw(target) as good, raw(target) as bad:
            good.writer.write(hello(BASE11))
            bad.writer.write(hello(BASE11))
            bad.writer.write(b"\n#0\n")
            assert await bad.closed()
            good.writer.write(chunk(f'<rpc message-id="1" xmlns="{NC}"><get-config><source><running/>'
                                    "</source></get-config></rpc>"))
            assert parse(await good.read_chunked()).get("message-id") == "1"
    run(go())
    assert "framing error" in target.log()


def test_oversized_message_closes_the_session(tmp_path):
    async def go(srv):
        async with Raw(srv) as s:
            s.writer.write(hello(BASE11))
            s.writer.write(b"\n#5000\n")
            assert await s.closed()
    assert "larger than 4096" in run_on_own_server(tmp_path, ["--max-message", "4096"], go)


def test_hello_timeout(tmp_path):
    async def go(srv):
        async with Raw(srv) as s:
            assert await s.closed(timeout=5)
    assert "hello timeout" in run_on_own_server(tmp_path, ["--hello-timeout", "1"], go)


def test_idle_timeout_counts_from_the_last_message(tmp_path):
    async def go(srv):
        async with Raw(srv) as s:
            s.writer.write(hello(BASE10))
            start = time.monotonic()
            for n in range(4):  # 3.6 s of activity, every gap under the 2 s timeout
                await asyncio.sleep(0.9)
                s.writer.write(f'<rpc message-id="{n}" xmlns="{NC}"><get-config><source><running/>'
                               "</source></get-config></rpc>]]>]]>".encode())
                assert parse(await s.read_until(b"]]>]]>")).get("message-id") == str(n)
            idle = time.monotonic()
            assert await s.closed(timeout=6)
            assert time.monotonic() - idle >= 1.9 and idle - start > 3
    assert "idle timeout after 2s" in run_on_own_server(tmp_path, ["--idle-timeout", "2"], go)


@pytest.mark.parametrize("client_hello", [
    f'<hello xmlns="{NC}"><capabilities><capability>{BASE11}</capability></capabilities>'
    "<session-id>4</session-id></hello>]]>]]>".encode(),
    hello("urn:example:base:9"),
    b"<rpc/>]]>]]>",
])
def test_bad_client_hello_closes(target, client_hello):
    async def go():
        async with raw(target) as s:
            s.writer.write(client_hello)
            assert await s.closed()
    run(go())


def test_only_the_netconf_subsystem(server):
    async def go():
        async with asyncssh.connect(server.host, server.port, username="admin", password=PASSWORD,
                                    known_hosts=None, client_keys=None) as conn:
            result = await conn.run("id", check=False)
            assert result.exit_status != 0
            stderr = result.stderr.decode() if isinstance(result.stderr, bytes) else str(result.stderr)
            assert "only the netconf subsystem" in stderr
    run(go())


def test_no_ignore_packet_before_each_reply(server, caplog):
    # asyncssh would put an empty SSH_MSG_IGNORE before every packet; the server leaves it out
    asyncssh.set_debug_level(3)
    try:
        async def go():
            async with Raw(server) as s:
                s.writer.write(hello(BASE11))
                for i in range(3):
                    s.writer.write(chunk(f'<rpc message-id="{i}" xmlns="{NC}"><get-config><source><running/>'
                                         f'</source></get-config></rpc>'))
                    await s.read_until(b"\n##\n")
        with caplog.at_level("DEBUG", logger="asyncssh"):
            run(go())
    finally:
        asyncssh.set_debug_level(1)
    received = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[conn=")
                and "Received" in r.getMessage()]
    assert any("MSG_CHANNEL_DATA" in m for m in received)
    assert not any("MSG_IGNORE" in m for m in received)


def test_wrong_password_is_refused(server):
    async def go():
        with pytest.raises(asyncssh.PermissionDenied):
            await asyncssh.connect(server.host, server.port, username="admin", password="nope",
                                   known_hosts=None, client_keys=None)
    run(go())


def test_session_limit(tmp_path):
    async def go(srv):
        async with Raw(srv):
            conn = await asyncssh.connect(srv.host, srv.port, username="admin", password=PASSWORD,
                                          known_hosts=None, client_keys=None)
            writer, reader, _ = await conn.open_session(subsystem="netconf", encoding=None)
            assert await asyncio.wait_for(reader.read(65536), 10) == b""  # no hello: refused
            conn.close()
    log = run_on_own_server(tmp_path, ["--max-sessions", "1", "--admin-sessions", "1"], go)
    assert "refusing a session for admin from 127.0.0.1: 1 sessions open, the most the server allows" in log


def test_error_path_prefixes_are_bound(target):
    ct = "urn:trustplane:test:config-test"

    async def go():
        async with raw(target) as s:
            s.writer.write(hello(BASE11))
            s.writer.write(chunk(f'<rpc message-id="1" xmlns="{NC}"><edit-config><target><running/></target>'
                                 f'<config><settings xmlns="{ct}"><mtu>1</mtu></settings></config>'
                                 "</edit-config></rpc>"))
            path = error_of(parse(await s.read_chunked()))["error-path"]
            assert path.text == "/config-test:settings/mtu"
            assert path.nsmap["config-test"] == ct
    run(go())


def test_hello_and_idle_timeouts_are_absolute(tmp_path):
    # a client that trickles bytes never finishing its message is cut at the deadline all the same
    async def trickle(s, data: bytes):
        for b in data:
            s.writer.write(bytes([b]))
            await asyncio.sleep(0.1)

    async def go(srv):
        async with Raw(srv) as s:
            start = time.monotonic()
            sender = asyncio.create_task(trickle(s, hello(BASE10)))
            assert await s.closed(timeout=8)
            assert time.monotonic() - start < 3.5 and not sender.done()
            sender.cancel()
        async with Raw(srv) as s:
            s.writer.write(hello(BASE10))
            start = time.monotonic()
            sender = asyncio.create_task(trickle(s, f'<rpc message-id="1" xmlns="{NC}"><get-config><source>'
                                                    "<running/></source></get-config></rpc>]]>]]>".encode()))
            assert await s.closed(timeout=8)
            assert time.monotonic() - start < 3.5 and not sender.done()
            sender.cancel()
    log = run_on_own_server(tmp_path, ["--hello-timeout", "2", "--idle-timeout", "2"], go)
    assert "hello timeout after 2s" in log and "idle timeout after 2s" in log


async def open_netconf(srv, username: str, password: str):
    """A netconf channel for username: (connection, its server hello) or (connection, the refusal)."""
    conn = await asyncssh.connect(srv.host, srv.port, username=username, password=password,
                                  known_hosts=None, client_keys=None)
    chan = await conn.create_process(subsystem="netconf", encoding=None)
    out = await asyncio.wait_for(chan.stdout.read(1), 10)
    if out:
        return conn, out
    result = await asyncio.wait_for(chan.wait(), 10)
    return conn, (result.exit_status, result.stderr.decode())


def test_sessions_per_user_and_kept_for_admin(tmp_path):
    args = ["--max-sessions", "5", "--max-sessions-per-user", "2", "--admin-sessions", "1"]

    async def go(srv):
        conns = []

        async def session(user, password=PASSWORD):
            conn, got = await open_netconf(srv, user, password)
            conns.append(conn)
            return got

        try:
            async with Raw(srv) as admin:
                admin.writer.write(hello(BASE10))
                users = "".join(f"<user><name>{n}</name><password>$0$pw-{n}</password></user>" for n in ("ops", "dev"))
                admin.writer.write(f'<rpc message-id="1" xmlns="{NC}"><edit-config><target><running/></target>'
                                   f'<config><system xmlns="urn:ietf:params:xml:ns:yang:ietf-system">'
                                   f"<authentication>{users}</authentication></system></config></edit-config>"
                                   "</rpc>]]>]]>".encode())
                assert b"<ok/>" in await admin.read_until(b"]]>]]>")
                assert await session("ops", "pw-ops") == b"<"
                assert await session("ops", "pw-ops") == b"<"
                assert await session("ops", "pw-ops") == (
                    1, "session refused: user ops has 2 sessions open, the most one user may have\n")
                assert await session("dev", "pw-dev") == b"<"  # 4 of 5 open
                assert await session("dev", "pw-dev") == (
                    1, "session refused: 4 sessions open; the last 1 are kept for admin\n")
                assert await session("admin") == b"<"  # the kept slot
                assert await session("admin") == (1, "session refused: 5 sessions open, the most the server allows\n")
                # ops holds 3 connections; twice its session limit is the most it may hold
                extra = await asyncssh.connect(srv.host, srv.port, username="ops", password="pw-ops",
                                               known_hosts=None, client_keys=None)
                conns.append(extra)
                closed = await asyncssh.connect(srv.host, srv.port, username="ops", password="pw-ops",
                                                known_hosts=None, client_keys=None)
                conns.append(closed)
                await asyncio.wait_for(closed.wait_closed(), 10)
                assert not extra.is_closed()
        finally:
            for conn in conns:
                conn.close()
    log = run_on_own_server(tmp_path, args, go)
    assert "refusing a session for ops from 127.0.0.1: user ops has 2 sessions open" in log
    assert "closing a connection of ops from 127.0.0.1: 4 connections open, the most one user may have" in log


def test_guessing_one_name_does_not_lock_out_another_from_the_same_address(tmp_path):
    async def attempt(srv, username, password):
        conn = await asyncssh.connect(srv.host, srv.port, username=username, password=password,
                                      known_hosts=None, client_keys=None, preferred_auth="password")
        conn.close()

    async def go(srv):
        for i in range(11):
            with pytest.raises(asyncssh.DisconnectError) as exc:
                await attempt(srv, "root", f"guess{i}")
            # the tenth failure, and any attempt after it, closes the connection at once
            assert (type(exc.value), exc.value.code) == ((asyncssh.PermissionDenied, 14) if i < 9 else
                                                         (asyncssh.DisconnectError, 11))
        await attempt(srv, "admin", PASSWORD)  # the same address, another name
    log = run_on_own_server(tmp_path, [], go)
    assert "refusing a password for 'root' unchecked: too many failed logins for this user from 127.0.0.1" in log


def test_connections_not_logged_in_are_bounded_per_address(server):
    import socket

    async def login():
        conn = await asyncssh.connect(server.host, server.port, username="admin", password=PASSWORD,
                                      known_hosts=None, client_keys=None)
        conn.close()

    idle = [socket.create_connection((server.host, server.port)) for _ in range(10)]
    try:
        for sock in idle:  # the server's version line: each connection is accepted and counted
            assert sock.recv(256).startswith(b"SSH-2.0-")
        # closed at once: the client sees a reset or the connection lost, as its reads fall
        with pytest.raises((ConnectionResetError, asyncssh.ConnectionLost)):
            run(login())
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 10
    while True:
        try:
            run(login())
            break
        except (ConnectionError, asyncssh.DisconnectError):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert "refusing a connection from 127.0.0.1: 10 connections from 127.0.0.1 not logged in yet" in server.log()


def test_login_queue_bounds_per_address_and_in_all():
    from nc_server.ssh import LoginQueue
    q = LoginQueue(per_source=2, total=3)
    assert q.enter("10.0.0.1") is None and q.enter("10.0.0.1") is None
    assert q.enter("10.0.0.1") == "2 connections from 10.0.0.1 not logged in yet"
    assert q.enter("10.0.0.2") is None
    assert q.enter("10.0.0.3") == "3 connections not logged in yet"
    q.leave("10.0.0.1")
    assert q.enter("10.0.0.3") is None
    for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        q.leave(ip)
    assert q._by_source == {}


def test_channels_per_connection_are_bounded(server):
    async def go():
        async with asyncssh.connect(server.host, server.port, username="admin", password=PASSWORD,
                                    known_hosts=None, client_keys=None) as conn:
            for _ in range(8):
                _writer, reader, _ = await conn.open_session(subsystem="netconf", encoding=None)
                assert (await asyncio.wait_for(reader.readuntil(b"]]>]]>"), 10)).startswith(b"<?xml")
            with pytest.raises(asyncssh.ChannelOpenError) as exc:
                await conn.open_session(subsystem="netconf", encoding=None)
            assert (exc.value.code, exc.value.reason) == (asyncssh.OPEN_RESOURCE_SHORTAGE,
                                                          "at most 8 channels per connection")
    run(go())


def test_termination_reasons_and_counters_of_ended_sessions(tmp_path):
    """netconf-session-end carries an RFC 6470 reason: broken framing is "other", a lost
    transport "dropped"; both count as dropped sessions, a bad hello only as a bad hello."""
    ncn = "urn:ietf:params:xml:ns:yang:ietf-netconf-notifications"
    ncm = "urn:ietf:params:xml:ns:yang:ietf-netconf-monitoring"

    def sid(s: Raw) -> str:
        return parse(s.server_hello).findtext(f"{{{NC}}}session-id")

    async def go(srv):
        async with Raw(srv) as watcher:
            watcher.writer.write(hello(BASE11))
            watcher.writer.write(chunk(f'<rpc message-id="1" xmlns="{NC}"><create-subscription '
                                       'xmlns="urn:ietf:params:xml:ns:netconf:notification:1.0"/></rpc>'))
            assert parse(await watcher.read_chunked()).find(f"{{{NC}}}ok") is not None
            expected = {}
            async with Raw(srv) as broken:
                broken.writer.write(hello(BASE11) + b"\n#0\n")
                assert await broken.closed()
                expected[sid(broken)] = "other"
            async with Raw(srv) as dropper:
                dropper.writer.write(hello(BASE10))
                expected[sid(dropper)] = "dropped"
            async with Raw(srv) as closer:
                closer.writer.write(hello(BASE10))
                closer.writer.write(f'<rpc message-id="2" xmlns="{NC}"><close-session/></rpc>]]>]]>'.encode())
                assert parse(await closer.read_until(b"]]>]]>")).find(f"{{{NC}}}ok") is not None
                assert await closer.closed()
                expected[sid(closer)] = "closed"
            async with Raw(srv) as bad:
                bad.writer.write(hello("urn:example:base:9"))
                assert await bad.closed()
            ended = {}
            while len(ended) < len(expected):
                end = parse(await watcher.read_chunked()).find(f"{{{ncn}}}netconf-session-end")
                if end is not None:
                    ended[end.findtext(f"{{{ncn}}}session-id")] = end.findtext(f"{{{ncn}}}termination-reason")
            assert ended == expected
            watcher.writer.write(chunk(f'<rpc message-id="3" xmlns="{NC}"><get><filter type="subtree">'
                                       f'<netconf-state xmlns="{ncm}"><statistics/></netconf-state>'
                                       "</filter></get></rpc>"))
            reply = parse(await watcher.read_chunked())
            stats = reply.find(f".//{{{ncm}}}statistics")
            assert stats.findtext(f"{{{ncm}}}dropped-sessions") == "2"
            assert stats.findtext(f"{{{ncm}}}in-bad-hellos") == "1"
            assert stats.findtext(f"{{{ncm}}}in-sessions") == "5"
    log = run_on_own_server(tmp_path, [], go)
    assert "ended (other): framing error: bad chunk header" in log
    assert "ended (bad-hello): no common base capability" in log


def test_close_session_and_kill_session_end_the_channel(target):
    def sid(s: Raw) -> str:
        return parse(s.server_hello).findtext(f"{{{NC}}}session-id")

    async def go():
        async with raw(target) as killer, raw(target) as victim:
            killer.writer.write(hello(BASE10))
            victim.writer.write(hello(BASE10))
            killer.writer.write(f'<rpc message-id="1" xmlns="{NC}"><kill-session><session-id>{sid(victim)}'
                                "</session-id></kill-session></rpc>]]>]]>".encode())
            assert parse(await killer.read_until(b"]]>]]>")).find(f"{{{NC}}}ok") is not None
            assert await victim.closed()
            # the reply to close-session is the last message: what follows it is not read
            killer.writer.write(f'<rpc message-id="2" xmlns="{NC}"><close-session/></rpc>]]>]]>'
                                f'<rpc message-id="3" xmlns="{NC}"><get-config><source><running/></source>'
                                "</get-config></rpc>]]>]]>".encode())
            reply = parse(await killer.read_until(b"]]>]]>"))
            assert reply.get("message-id") == "2" and reply.find(f"{{{NC}}}ok") is not None
            assert await killer.closed() and killer.buf == b""
    run(go())
