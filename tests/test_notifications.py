"""RFC 5277 notifications and the RFC 6470 base events over SSH with ncclient:
live delivery, filters, replay (also across a restart), the bounded log,
interleaved RPCs, errors and a subscriber that stops reading."""
import asyncio
import errno
import json
import subprocess
import time
from datetime import datetime, timedelta, timezone

import asyncssh
import pytest
from lxml import etree
from ncclient.operations.rpc import RPCError

from conftest import CT, NC, PASSWORD, ServerProcess, rpc
from nc_server.notifications import EventFilter, ReplayLog

NOTIF = "urn:ietf:params:xml:ns:netconf:notification:1.0"
NCN = "urn:ietf:params:xml:ns:yang:ietf-netconf-notifications"
MANAGE = "urn:ietf:params:xml:ns:netmod:notification"
PAST = "2000-01-01T00:00:00Z"


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def name_cfg(name: str) -> str:
    return f'<config xmlns="{NC}"><settings xmlns="{CT}"><name>{name}</name></settings></config>'


def take(m, timeout=5.0, quiet=1.0) -> list[etree._Element]:
    """Every notification that arrives until none comes for `quiet` seconds
    (`timeout` for the first)."""
    out = []
    while (n := m.take_notification(timeout=timeout)) is not None:
        out.append(etree.fromstring(n.notification_xml.encode()))
        timeout = quiet
    return out


def body(n: etree._Element) -> etree._Element:
    return [c for c in n if etree.QName(c).localname != "eventTime"][0]


def kinds(notes) -> list[str]:
    return [etree.QName(body(n)).localname for n in notes]


def test_live_events(server, nc):
    with server.connect() as watcher:
        watcher.create_subscription()
        with server.connect() as other:
            other.edit_config(target="running", config=name_cfg("live"))
            other.edit_config(target="candidate", config=name_cfg("conf"))
            rpc(other, f'<commit xmlns="{NC}"><confirmed/><confirm-timeout>60</confirm-timeout></commit>')
            other.commit()
            sid = other.session_id
        notes = take(watcher)
        # the confirming commit changes nothing, so it raises no config change
        assert kinds(notes) == ["netconf-session-start", "netconf-config-change", "netconf-config-change",
                                "netconf-confirmed-commit", "netconf-confirmed-commit", "netconf-session-end"]
        change = body(notes[1])
        assert change.findtext(f"{{{NCN}}}datastore") == "running"
        assert change.findtext(f"{{{NCN}}}changed-by/{{{NCN}}}session-id") == str(sid)
        target = change.find(f"{{{NCN}}}edit/{{{NCN}}}target")
        assert target.text == "/config-test:settings"  # the container was created with its leaf
        assert target.nsmap["config-test"] == CT
        assert change.findtext(f"{{{NCN}}}edit/{{{NCN}}}operation") == "create"
        assert body(notes[3]).findtext(f"{{{NCN}}}confirm-event") == "start"
        assert body(notes[3]).findtext(f"{{{NCN}}}timeout") == "60"
        assert body(notes[4]).findtext(f"{{{NCN}}}confirm-event") == "complete"
        assert body(notes[5]).findtext(f"{{{NCN}}}termination-reason") == "closed"
        # event times are increasing
        times = [n.findtext(f"{{{NOTIF}}}eventTime") for n in notes]
        assert times == sorted(times)
        # RPCs keep working on a subscribed session
        assert watcher.get_config(source="running").ok


def test_kill_and_timeout_events(server, nc):
    with server.connect() as watcher:
        watcher.create_subscription()
        victim = server.connect()
        nc.kill_session(victim.session_id)
        nc.edit_config(target="candidate", config=name_cfg("tmp"))
        rpc(nc, f'<commit xmlns="{NC}"><confirmed/><confirm-timeout>1</confirm-timeout></commit>')
        notes = take(watcher, quiet=4)  # the confirmed commit times out after 1 s
        ends = [body(n) for n in notes if etree.QName(body(n)).localname == "netconf-session-end"]
        assert ends[0].findtext(f"{{{NCN}}}termination-reason") == "killed"
        assert ends[0].findtext(f"{{{NCN}}}killed-by") == str(nc.session_id)
        events = [body(n).findtext(f"{{{NCN}}}confirm-event") for n in notes
                  if etree.QName(body(n)).localname == "netconf-confirmed-commit"]
        assert events == ["start", "timeout"]


def test_filters(server, nc):
    with server.connect() as sub_tree, server.connect() as sub_xpath:
        sub_tree.create_subscription(filter=("subtree", f'<netconf-config-change xmlns="{NCN}"/>'))
        rpc(sub_xpath, f'<create-subscription xmlns="{NOTIF}"><filter type="xpath" xmlns:n="{NCN}" '
                       "select=\"/n:netconf-session-start[n:username='admin']\"/></create-subscription>")
        nc.edit_config(target="running", config=name_cfg("filtered"))
        server.connect().close_session()
        assert kinds(take(sub_tree)) == ["netconf-config-change"]
        assert kinds(take(sub_xpath)) == ["netconf-session-start"]


def test_replay_window_and_completion(server, nc):
    start = datetime.now(timezone.utc) - timedelta(seconds=1)
    nc.edit_config(target="running", config=name_cfg("replayed"))
    time.sleep(1.1)
    stop = datetime.now(timezone.utc)
    with server.connect() as m:
        m.create_subscription(filter=("subtree", f'<netconf-config-change xmlns="{NCN}"/>'),
                              start_time=iso(start), stop_time=iso(stop))
        notes = take(m)
        assert kinds(notes)[-2:] == ["replayComplete", "notificationComplete"]
        assert "netconf-config-change" in kinds(notes)
        # the subscription has ended: a new one is allowed
        m.create_subscription()


@pytest.mark.parametrize("params,tag", [
    ("<stream>OTHER</stream>", "invalid-value"),
    (f"<stopTime>{PAST}</stopTime>", "missing-element"),
    ("<startTime>2999-01-01T00:00:00Z</startTime>", "bad-element"),
    (f"<startTime>2020-01-02T00:00:00Z</startTime><stopTime>{PAST}</stopTime>", "bad-element"),
    ("<startTime>yesterday</startTime>", "invalid-value"),
    ('<filter type="regex"/>', "bad-attribute"),
    ('<filter type="xpath" select="/(("/>', "invalid-value"),
    ("<bogus/>", "unknown-element"),
])
def test_subscription_errors(nc, params, tag):
    with pytest.raises(RPCError) as exc:
        rpc(nc, f'<create-subscription xmlns="{NOTIF}">{params}</create-subscription>')
    assert exc.value.tag == tag


def test_one_subscription_per_session(nc):
    nc.create_subscription()
    with pytest.raises(RPCError) as exc:
        nc.create_subscription()
    assert exc.value.tag == "in-use"


def test_replay_survives_restart_and_log_is_bounded(tmp_path):
    srv = ServerProcess(tmp_path / "state", "--replay-size", "5").start()
    try:
        with srv.connect() as m:
            for i in range(4):
                m.edit_config(target="running", config=name_cfg(f"n{i}"))
        srv.stop()
        srv.start()
        with srv.connect() as m:
            m.create_subscription(start_time=PAST)
            notes = take(m)
            # 1 start + 4 changes + 1 end + 1 start (this session) = 7 logged, 5 kept
            assert kinds(notes)[:-1] == ["netconf-config-change", "netconf-config-change",
                                         "netconf-config-change", "netconf-session-end",
                                         "netconf-session-start"]
            assert kinds(notes)[-1] == "replayComplete"
            streams = etree.fromstring(m.get(filter=("subtree", f'<netconf xmlns="{MANAGE}"/>')).data_xml.encode())
            assert streams.findtext(f".//{{{MANAGE}}}replayLogAgedTime")
            assert streams.findtext(f".//{{{MANAGE}}}replaySupport") == "true"
    finally:
        srv.stop()


def test_a_subscriber_that_stops_reading_is_closed(tmp_path):
    srv = ServerProcess(tmp_path / "state", "--notification-queue", "20").start()
    try:
        async def stalled():
            conn = await asyncssh.connect(srv.host, srv.port, username="admin", password=PASSWORD,
                                          known_hosts=None, client_keys=None)
            writer, reader, _ = await conn.open_session(subsystem="netconf", encoding=None,
                                                        window=4096, max_pktsize=4096)
            writer.write(f'<hello xmlns="{NC}"><capabilities><capability>urn:ietf:params:netconf:base:1.0'
                         "</capability></capabilities></hello>]]>]]>".encode())
            writer.write(f'<rpc message-id="1" xmlns="{NC}"><create-subscription xmlns="{NOTIF}"/></rpc>]]>]]>'
                         .encode())
            return conn  # and never read again

        loop = asyncio.new_event_loop()
        conn = loop.run_until_complete(stalled())
        big = "x" * 2000
        with srv.connect() as m:
            # each edit raises a netconf-config-change; once the SSH window and the socket buffers
            # are full, 20 more wait in the queue, and then the subscriber is closed
            for i in range(300):
                m.edit_config(target="running", config=name_cfg(f"{big}{i}"[-32:]))
                if "fell 20 notifications behind" in srv.log():
                    break
            assert "fell 20 notifications behind" in srv.log()
            # the server still answers everyone else
            assert m.get_config(source="running").ok
        conn.close()
        loop.close()
    finally:
        srv.stop()


def test_a_bulk_edit_is_one_record(server, nc):
    nc.edit_config(target="running", config=f'<config xmlns="{NC}"><bulk xmlns="{CT}"><entry><name>first</name>'
                                            "</entry></bulk></config>")
    with server.connect() as watcher:
        watcher.create_subscription(filter=("subtree", f'<netconf-config-change xmlns="{NCN}"/>'))
        few = "".join(f"<entry><name>a{i}</name></entry>" for i in range(3))
        many = "".join(f"<entry><name>b{i}</name></entry>" for i in range(150))
        for entries in (few, many):
            nc.edit_config(target="running", config=f'<config xmlns="{NC}"><bulk xmlns="{CT}">{entries}</bulk></config>')
        first, second = [body(n) for n in take(watcher)]
        targets = [e.findtext(f"{{{NCN}}}target") for e in first.iter(f"{{{NCN}}}edit")]
        assert targets == [f"/config-test:bulk/config-test:entry[config-test:name='a{i}']" for i in range(3)]
        edits = [(e.findtext(f"{{{NCN}}}target"), e.findtext(f"{{{NCN}}}operation"))
                 for e in second.iter(f"{{{NCN}}}edit")]
        assert edits == [("/config-test:bulk", "merge")]


def test_confirmed_commit_extend_and_cancel_events(server, nc):
    with server.connect() as watcher:
        watcher.create_subscription(filter=("subtree", f'<netconf-confirmed-commit xmlns="{NCN}"/>'))
        nc.edit_config(target="candidate", config=name_cfg("one"))
        rpc(nc, f'<commit xmlns="{NC}"><confirmed/><confirm-timeout>60</confirm-timeout></commit>')
        nc.edit_config(target="candidate", config=name_cfg("two"))
        rpc(nc, f'<commit xmlns="{NC}"><confirmed/><confirm-timeout>90</confirm-timeout></commit>')
        rpc(nc, f'<cancel-commit xmlns="{NC}"/>')
        events = [(body(n).findtext(f"{{{NCN}}}confirm-event"), body(n).findtext(f"{{{NCN}}}timeout"))
                  for n in take(watcher)]
        assert events == [("start", "60"), ("extend", "90"), ("cancel", None)]


@pytest.mark.parametrize("flt,tag,app_tag,message", [
    # EXSLT regular expressions would run a client's pattern on every notification
    (f'<filter type="xpath" xmlns:re="http://exslt.org/regular-expressions" xmlns:n="{NCN}" '
     "select=\"/n:netconf-session-start[re:test(n:username, '^(a+)+$')]\"/>",
     "invalid-value", "xpath-construct-not-allowed", 'the function "re:test" is not allowed'),
    ('<filter type="xpath" xmlns:str="http://exslt.org/strings" select="str:padding(1000000000)"/>',
     "invalid-value", "xpath-construct-not-allowed", 'the function "str:padding" is not allowed'),
    (f'<filter type="xpath" xmlns:n="{NCN}" select="//n:edit[following::n:edit]"/>',
     "invalid-value", "xpath-construct-not-allowed", 'the axis "following" is not allowed'),
    (f'<filter type="xpath" xmlns:n="{NCN}" select="/n:x[n:y=\'{"z" * 4096}\']"/>',
     "too-big", "filter-too-large", "longer than 4096 characters"),
    (f'<filter type="subtree"><netconf-config-change xmlns="{NCN}">{"<edit/>" * 100}</netconf-config-change>'
     "</filter>", "too-big", "filter-too-large", "more than 100 elements"),
    ('<filter type="xpath"/>', "missing-attribute", None, "needs a select attribute"),
])
def test_subscription_filter_limits(nc, flt, tag, app_tag, message):
    with pytest.raises(RPCError) as exc:
        rpc(nc, f'<create-subscription xmlns="{NOTIF}">{flt}</create-subscription>')
    assert (exc.value.tag, exc.value.app_tag) == (tag, app_tag)
    assert message in exc.value.message
    nc.create_subscription()  # nothing was left behind


def log_lines(path) -> list[float]:
    return [json.loads(line)["time"] for line in path.read_text().splitlines()]


def test_a_full_replay_log_is_appended_and_compacted_at_twice_its_size(tmp_path):
    async def fill():
        for t in range(1, 7):
            log.append(float(t), f"<e{t}/>")
            if t == 3:
                inode = log.path.stat().st_ino
        # full since the 4th: still the same file, one more line each time
        assert log.path.stat().st_ino == inode and log.compaction is None
        assert log_lines(log.path) == [1, 2, 3, 4, 5, 6]
        assert [t for t, _ in log.entries] == [4, 5, 6]
        assert log.aged == 6  # the 6th notification aged the 3rd out
        log.append(7.0, "<e7/>")  # more than twice the size: compacted
        await log.compaction

    log = ReplayLog(tmp_path, 3)
    asyncio.run(fill())
    assert log_lines(log.path) == [5, 6, 7]
    assert json.loads(log.meta_path.read_text())["aged"] == 7
    # a restart keeps the newest and the aged time; a damaged last line is skipped
    with open(log.path, "a") as f:
        f.write('{"time": 8.0, "xml": "<e8/>"}\n{"time": 9.0, "xm')
    again = ReplayLog(tmp_path, 2)
    assert [t for t, _ in again.entries] == [7, 8]
    assert again.aged == 8 and again.created == log.created
    assert log_lines(again.path) == [7, 8]  # 4 lines for 2 kept: compacted on load


def test_compaction_runs_in_an_executor_and_keeps_what_arrives_meanwhile(tmp_path):
    async def go():
        log = ReplayLog(tmp_path, 2)
        for t in range(1, 6):
            log.append(float(t), f"<e{t}/>")
        assert log.compaction is not None  # the 5th line started it
        log.append(6.0, "<e6/>")  # while the executor writes the new file
        await log.compaction
        assert log.compaction is None
        assert log_lines(log.path) == [4, 5, 6]
        assert [t for t, _ in ReplayLog(tmp_path, 2).entries] == [5, 6]
    asyncio.run(go())


@pytest.fixture
def tiny_log_fs(tmp_path):
    """A 64 KiB tmpfs as the server's notifications/ directory."""
    where = tmp_path / "state" / "notifications"
    where.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(where)], check=True)
    yield where
    subprocess.run(["umount", str(where)], check=True)


def fill(where):
    with open(where / "filler", "wb", buffering=0) as f:
        with pytest.raises(OSError) as exc:
            while True:
                f.write(b"x" * 4096)
    assert exc.value.errno == errno.ENOSPC


def test_a_full_or_read_only_notification_log_breaks_nothing(tmp_path, tiny_log_fs):
    srv = ServerProcess(tmp_path / "state").start()
    try:
        fill(tiny_log_fs)
        with srv.connect() as watcher:  # its session-start cannot be logged
            watcher.create_subscription()
            with srv.connect() as m:
                m.edit_config(target="running", config=name_cfg("full"))
                assert m.get_config(source="running").ok
            assert kinds(take(watcher)) == ["netconf-session-start", "netconf-config-change",
                                            "netconf-session-end"]
            # what could not be written is still replayed while the server runs
            with srv.connect() as late:
                late.create_subscription(filter=("subtree", f'<netconf-config-change xmlns="{NCN}"/>'),
                                         start_time=PAST)
                assert kinds(take(late)) == ["netconf-config-change", "replayComplete"]
        log = srv.log()
        assert log.count("cannot write (No space left on device)") == 1
        srv.stop()
        subprocess.run(["mount", "-o", "remount,ro", str(tiny_log_fs)], check=True)
        srv.start()  # on a read-only log directory
        with srv.connect() as m:
            m.edit_config(target="running", config=name_cfg("read-only"))
            m.create_subscription(start_time=PAST)
            assert "replayComplete" in kinds(take(m))
        log = srv.log()
        assert "cannot write (Read-only file system)" in log
        assert "Traceback" not in log and "internal error" not in log
    finally:
        srv.stop()


def event(xml: str) -> etree._Element:
    return etree.fromstring(xml)


CHANGE = (f'<netconf-config-change xmlns="{NCN}"><changed-by><username>admin</username></changed-by>'
          "<datastore>running</datastore><edit><target>/a:x</target><operation>merge</operation></edit>"
          "<edit><target>/a:y</target><operation>delete</operation></edit></netconf-config-change>")


@pytest.mark.parametrize("flt,selected", [
    (f'<netconf-config-change xmlns="{NCN}"/>', True),
    ('<netconf-config-change xmlns=""/>', True),  # no namespace: any
    (f'<netconf-session-start xmlns="{NCN}"/>', False),
    (f'<netconf-config-change xmlns="{NCN}"><datastore> running </datastore></netconf-config-change>', True),
    (f'<netconf-config-change xmlns="{NCN}"><datastore>startup</datastore></netconf-config-change>', False),
    # content matches are anded, on the same edit
    (f'<netconf-config-change xmlns="{NCN}"><edit><target>/a:y</target><operation>delete</operation></edit>'
     "</netconf-config-change>", True),
    (f'<netconf-config-change xmlns="{NCN}"><edit><target>/a:y</target><operation>merge</operation></edit>'
     "</netconf-config-change>", False),
    # containment: any child selecting something
    (f'<netconf-config-change xmlns="{NCN}"><changed-by><session-id/></changed-by><datastore/>'
     "</netconf-config-change>", True),
    (f'<netconf-config-change xmlns="{NCN}"><changed-by><session-id/></changed-by></netconf-config-change>', False),
    (f"<netconf-config-change xmlns=\"{NCN}\"><edit><target>it's \"x\"</target></edit></netconf-config-change>",
     False),
    ("", False),
])
def test_subtree_event_filter(flt, selected):
    compiled = EventFilter(etree.fromstring(f'<filter xmlns="{NC}" type="subtree">{flt}</filter>'))
    assert compiled.matches(event(CHANGE)) is selected
