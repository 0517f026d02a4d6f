"""The NETCONF connection as a state machine: bytes in, events out, no sockets."""
import libyang
import pytest
from lxml import etree

from nc_server.connection import (
    NEED_DATA, BadRpc, Closed, Connection, ConnectionStateError, EndReason, Hello, Rpc, State)
from nc_server.framing import encode
from nc_server.netconf_monitoring import Counters
from yangcore.schema import IETF_DIR

NC = "urn:ietf:params:xml:ns:netconf:base:1.0"
BASE10 = "urn:ietf:params:netconf:base:1.0"
BASE11 = "urn:ietf:params:netconf:base:1.1"
SERVER_CAPS = [BASE10, BASE11, "urn:ietf:params:netconf:capability:candidate:1.0"]


def hello(*caps: str, extra: str = "") -> bytes:
    body = "".join(f"<capability>{c}</capability>" for c in caps)
    return f'<hello xmlns="{NC}"><capabilities>{body}</capabilities>{extra}</hello>]]>]]>'.encode()


def rpc(mid: str, op: str = "<get/>") -> bytes:
    return f'<rpc message-id="{mid}" xmlns="{NC}">{op}</rpc>'.encode()


def events(conn: Connection, data: bytes = None) -> list:
    """Every event the data brings, up to NEED_DATA or Closed."""
    if data is not None:
        conn.receive_data(data)
    out = []
    while True:
        ev = conn.next_event()
        if ev is NEED_DATA:
            return out
        out.append(ev)
        if isinstance(ev, Closed):
            return out


def established(*caps: str, **kw) -> Connection:
    conn = Connection(7, SERVER_CAPS, **kw)
    conn.send_hello()
    assert [type(e) for e in events(conn, hello(*caps))] == [Hello]
    return conn


def test_server_hello_carries_capabilities_and_session_id_in_eom_framing():
    conn = Connection(7, SERVER_CAPS)
    wire = conn.send_hello()
    assert wire.endswith(b"]]>]]>")
    root = etree.fromstring(wire[:-6])
    assert [c.text for c in root.iter(f"{{{NC}}}capability")] == SERVER_CAPS
    assert root.findtext(f"{{{NC}}}session-id") == "7"
    events(conn, hello(BASE11))
    with pytest.raises(ConnectionStateError, match="hello sent in state established"):
        conn.send_hello()


@pytest.mark.parametrize("caps, chunked", [((BASE10,), False), ((BASE11,), True), ((BASE10, BASE11), True)])
def test_hello_exchange_negotiates_the_framing_once(caps, chunked):
    conn = Connection(7, SERVER_CAPS)
    conn.send_hello()
    assert conn.state is State.AWAIT_HELLO
    assert events(conn, hello(*caps)) == [Hello(caps, chunked)]
    assert conn.state is State.ESTABLISHED and conn.chunked is chunked
    wire = encode(rpc("1"), chunked)
    [ev] = events(conn, wire)
    assert isinstance(ev, Rpc) and ev.message == rpc("1") and ev.message_id == "1"
    assert conn.send_reply(b"<rpc-reply/>") == encode(b"<rpc-reply/>", chunked)
    assert conn.send_notification(b"<notification/>") == encode(b"<notification/>", chunked)


def test_base11_only_when_both_sides_have_it():
    conn = Connection(7, [BASE10])
    conn.send_hello()
    assert events(conn, hello(BASE10, BASE11)) == [Hello((BASE10, BASE11), False)]
    assert conn.send_reply(b"<r/>") == b"<r/>]]>]]>"


def test_chunked_data_in_the_same_read_as_the_hello():
    # the chunk holds an EOM delimiter: read as base:1.0 it would be split
    body = f'<rpc message-id="1" xmlns="{NC}"><get><!-- ]]>]]> --></get></rpc>'.encode()
    conn = Connection(7, SERVER_CAPS)
    got = events(conn, hello(BASE11) + encode(body, True, max_chunk=5))
    assert [type(e) for e in got] == [Hello, Rpc] and got[1].message == body


def test_pipelined_rpcs_in_one_chunk_of_data():
    conn = established(BASE11)
    got = events(conn, b"".join(encode(rpc(str(n)), True) for n in range(5)))
    assert [e.message_id for e in got] == ["0", "1", "2", "3", "4"]
    assert conn.counters.in_rpcs == 5


@pytest.mark.parametrize("caps", [(BASE10,), (BASE11,)])
def test_data_split_byte_by_byte(caps):
    chunked = caps == (BASE11,)
    conn = Connection(7, SERVER_CAPS)
    wire = hello(*caps) + encode(rpc("a"), chunked, max_chunk=3) + encode(rpc("b"), chunked)
    got = []
    for i in range(len(wire)):
        got += events(conn, wire[i:i + 1])
    assert [type(e) for e in got] == [Hello, Rpc, Rpc]
    assert [e.message_id for e in got[1:]] == ["a", "b"]


@pytest.mark.parametrize("wire, detail", [
    (b"\n#0\n", "bad chunk header"),
    (b"\n##\n", "end-of-chunks marker without any chunk"),
    (b"\n#x\n", "bad chunk header"),
    (b"<rpc/>]]>]]>", "bad chunk header"),
    (b"\n#99999999999\n", "bad chunk header"),
])
def test_chunked_framing_errors_end_the_connection_as_other(wire, detail):
    conn = established(BASE11)
    [ev] = events(conn, wire)
    assert ev.reason is EndReason.OTHER and ev.detail.startswith("framing error: " + detail)
    assert conn.state is State.CLOSED and ev.reason.abnormal
    assert conn.next_event() is ev  # a closed connection stays closed
    conn.receive_data(b"more")
    assert conn.next_event() is ev


def test_a_framing_error_in_the_same_read_as_the_hello_comes_after_the_hello():
    conn = Connection(7, SERVER_CAPS)
    got = events(conn, hello(BASE11) + b"\n#0\n")
    assert got == [Hello((BASE11,), True), Closed(EndReason.OTHER, "framing error: bad chunk header b'\\n#0\\n'")]


@pytest.mark.parametrize("chunked", [False, True])
def test_message_too_large(chunked):
    conn = established(BASE11 if chunked else BASE10, max_message=200)
    [ev] = events(conn, encode(b"x" * 201, chunked)[:210])
    assert ev == Closed(EndReason.OTHER, "framing error: message larger than 200 bytes")
    conn = established(BASE11 if chunked else BASE10, max_message=200)
    body = f'<rpc message-id="1" xmlns="{NC}"><get/></rpc>'.encode().ljust(200)
    assert [e.message_id for e in events(conn, encode(body, chunked))] == ["1"]


@pytest.mark.parametrize("wire, detail", [
    (hello(BASE11, extra="<session-id>4</session-id>"), "client hello carries a session-id"),
    (hello("urn:example:base:9"), "no common base capability"),
    (hello(), "no common base capability"),
    (rpc("1") + b"]]>]]>", "expected <hello>, got <rpc>"),
    (b"<hello]]>]]>", "unparsable hello"),
])
def test_bad_hello(wire, detail):
    conn = Connection(7, SERVER_CAPS)
    conn.send_hello()
    [ev] = events(conn, wire)
    assert ev.reason is EndReason.BAD_HELLO and ev.detail.startswith(detail)
    assert conn.state is State.CLOSED and not ev.reason.abnormal
    with pytest.raises(ConnectionStateError, match="rpc-reply sent in state closed"):
        conn.send_reply(b"<rpc-reply/>")


def test_no_reply_before_the_hello():
    conn = Connection(7, SERVER_CAPS)
    with pytest.raises(ConnectionStateError, match="rpc-reply sent in state await-hello"):
        conn.send_reply(b"<rpc-reply/>")
    with pytest.raises(ConnectionStateError, match="notification sent in state await-hello"):
        conn.send_notification(b"<notification/>")


@pytest.mark.parametrize("wire, tag, echoed", [
    (b"<rpc", "malformed-message", False),
    (f'<get xmlns="{NC}"/>'.encode(), "malformed-message", False),
    (f'<rpc xmlns="{NC}"><get/></rpc>'.encode(), "missing-attribute", True),
])
def test_bad_rpc_envelopes_are_events_and_the_connection_goes_on(wire, tag, echoed):
    conn = established(BASE10)
    got = events(conn, wire + b"]]>]]>" + rpc("2") + b"]]>]]>")
    assert [type(e) for e in got] == [BadRpc, Rpc]
    assert got[0].error.tag == tag and (got[0].root is not None) is echoed
    assert (conn.counters.in_rpcs, conn.counters.in_bad_rpcs) == (2, 1)


def test_close_session_reply_is_the_last_message():
    conn = established(BASE11)
    got = events(conn, encode(rpc("1", "<close-session/>"), True) + encode(rpc("2"), True))
    assert got[0].message_id == "1"
    conn.close_after_reply()
    assert conn.state is State.CLOSING
    conn.send_notification(b"<notification/>")  # still allowed before the reply
    conn.send_reply(b"<rpc-reply/>")
    assert conn.state is State.CLOSED
    assert conn.next_event() == Closed(EndReason.CLOSED, "closed by the client")


def test_eof():
    conn = established(BASE10)
    assert events(conn, b"  \n") == []
    assert events(conn, b"") == [Closed(EndReason.DROPPED, "the client went away without close-session")]
    conn = established(BASE10)
    assert events(conn, b"<rpc") == []
    [ev] = events(conn, b"")
    assert ev.reason is EndReason.OTHER and "in the middle of a message" in ev.detail
    conn = Connection(7, SERVER_CAPS)
    assert events(conn, b"") == [Closed(EndReason.CLOSED, "closed before hello")]


def test_eof_after_complete_messages_delivers_them_first():
    conn = established(BASE10)
    conn.receive_data(rpc("1") + b"]]>]]>")
    conn.receive_data(b"")
    got = events(conn)
    assert [type(e) for e in got] == [Rpc, Closed] and got[1].reason is EndReason.DROPPED


def test_close_from_the_transport_and_first_reason_stands():
    conn = established(BASE10)
    conn.close(EndReason.KILLED, "killed by session 3", killed_by=3)
    conn.close(EndReason.DROPPED, "connection lost")
    assert conn.next_event() == Closed(EndReason.KILLED, "killed by session 3", 3)
    assert not EndReason.KILLED.abnormal


def test_timeout_before_the_hello():
    conn = Connection(7, SERVER_CAPS)
    conn.receive_data(b"<hel")
    conn.close(EndReason.TIMEOUT, "hello timeout after 1s")
    assert conn.next_event().reason is EndReason.TIMEOUT and EndReason.TIMEOUT.abnormal


@pytest.mark.parametrize("state, allowed", [
    (State.AWAIT_HELLO, {State.ESTABLISHED, State.CLOSED}),
    (State.ESTABLISHED, {State.CLOSING, State.CLOSED}),
    (State.CLOSING, {State.CLOSED}),
    (State.CLOSED, set()),
])
def test_every_illegal_transition_is_refused(state, allowed):
    for new in State:
        conn = Connection(7, SERVER_CAPS)
        conn.state = state
        if new in allowed:
            conn._set_state(new)
            assert conn.state is new
        else:
            with pytest.raises(ConnectionStateError, match=f"no transition from {state.value} to {new.value}"):
                conn._set_state(new)
            assert conn.state is state


def test_close_after_reply_before_the_hello_is_a_bug():
    conn = Connection(7, SERVER_CAPS)
    with pytest.raises(ConnectionStateError, match="no transition from await-hello to closing"):
        conn.close_after_reply()


def test_counters_add_to_the_totals():
    totals = Counters()
    conn = established(BASE10, counters=Counters(totals))
    events(conn, rpc("1") + b"]]>]]><x/>]]>]]>")
    conn.send_reply(b"<rpc-reply/>", error=True)
    conn.send_notification(b"<notification/>")
    for c in (conn.counters, totals):
        assert (c.in_rpcs, c.in_bad_rpcs, c.out_rpc_errors, c.out_notifications) == (2, 1, 1, 1)


def test_end_reasons_are_exactly_the_termination_reasons_of_rfc_6470():
    ctx = libyang.Context(str(IETF_DIR))
    try:
        ctx.load_module("ietf-netconf-notifications")
        leaf = next(ctx.find_path("/ietf-netconf-notifications:netconf-session-end/termination-reason"))
        assert {e.name() for e in leaf.type().enums()} == {r.value for r in EndReason}
    finally:
        ctx.destroy()
