"""Datastore operations over SSH: get/get-config with filters, copy-config,
delete-config, lock/unlock across sessions, validate, commit, discard-changes,
kill-session and close-session."""
import pytest
from lxml import etree
from ncclient.operations.rpc import RPCError

from conftest import CT, KEEP_ADMIN, NC, rpc

NS = {"ct": CT}
DEV = "urn:trustplane:yang:trustplane-device"


def cfg(body: str) -> str:
    return f'<config xmlns="{NC}">{body}</config>'


def name_cfg(name: str) -> str:
    return cfg(f'<settings xmlns="{CT}"><name>{name}</name></settings>')


def names(m, source="running") -> list[str]:
    reply = m.get_config(source=source, filter=("xpath", (NS, "/ct:settings/ct:name")))
    return [e.text for e in etree.fromstring(reply.xml.encode()).iter(f"{{{CT}}}name")]


def error(call, *args, **kw) -> RPCError:
    with pytest.raises(RPCError) as exc:
        call(*args, **kw)
    return exc.value


# -- get / get-config filters ------------------------------------------------------

def test_subtree_filter_selection_and_content_match(nc):
    nc.edit_config(target="running", config=cfg(
        f'<servers xmlns="{CT}"><server><name>a</name><address>1</address><port>1</port></server>'
        "<server><name>b</name><address>2</address></server></servers>"))
    flt = f'<servers xmlns="{CT}"><server><name>b</name><address/></server></servers>'
    data = etree.fromstring(nc.get_config(source="running", filter=("subtree", flt)).data_xml.encode())
    got = [(s.findtext(f"{{{CT}}}name"), s.findtext(f"{{{CT}}}address"), s.findtext(f"{{{CT}}}port"))
           for s in data.iter(f"{{{CT}}}server")]
    assert got == [("b", "2", None)]


def test_empty_filter_selects_nothing(nc):
    nc.edit_config(target="running", config=name_cfg("x"))
    reply = rpc(nc, f'<get-config xmlns="{NC}"><source><running/></source><filter type="subtree"/></get-config>')
    data = etree.fromstring(reply.xml.encode()).find(f"{{{NC}}}data")
    assert data is not None and len(data) == 0


def test_xpath_filter(nc):
    nc.edit_config(target="running", config=name_cfg("x"))
    assert names(nc) == ["x"]


def test_get_returns_state_and_config(nc):
    nc.edit_config(target="running", config=name_cfg("x"))
    data = etree.fromstring(nc.get().data_xml.encode())
    assert data.find(f".//{{{DEV}}}inventory/{{{DEV}}}node") is not None
    assert data.find(f".//{{{CT}}}settings/{{{CT}}}name").text == "x"
    # get-config never has state
    data = etree.fromstring(nc.get_config(source="running").data_xml.encode())
    assert data.find(f".//{{{DEV}}}inventory") is None


@pytest.mark.parametrize("flt,tag,app_tag,message", [
    (f'<filter type="xpath" xmlns:c="{CT}" select="/c:settings[re-match(c:name, \'(a+)+b\')]"/>',
     "invalid-value", "xpath-construct-not-allowed", 'the function "re-match" is not allowed'),
    (f'<filter type="subtree"><bulk xmlns="{CT}">{"<entry><name>x</name></entry>" * 5000}</bulk></filter>',
     "too-big", "filter-too-large", "more than 10000 elements"),
])
def test_get_filter_limits(nc, flt, tag, app_tag, message):
    for op in (f'<get-config xmlns="{NC}"><source><running/></source>{flt}</get-config>',
               f'<get xmlns="{NC}">{flt}</get>'):
        with pytest.raises(RPCError) as exc:
            rpc(nc, op)
        assert (exc.value.tag, exc.value.app_tag) == (tag, app_tag)
        assert message in exc.value.message


def test_bad_filters(nc):
    assert error(nc.get_config, source="running", filter=("xpath", (NS, "/ct:settings["))).tag == "invalid-value"
    assert error(nc.get_config, source="running",
                 filter=("xpath", ({"zz": "urn:nowhere"}, "/zz:x"))).tag == "invalid-value"
    err = error(rpc, nc, f'<get xmlns="{NC}"><filter type="regex">.*</filter></get>')
    assert err.tag in ("bad-attribute", "invalid-value")


def test_with_defaults_modes(nc):
    nc.edit_config(target="running", config=name_cfg("x"))

    def mtu(mode):
        body = (f'<get-config xmlns="{NC}"><source><running/></source>'
                f'<filter type="subtree"><settings xmlns="{CT}"/></filter>'
                f'<with-defaults xmlns="urn:ietf:params:xml:ns:yang:ietf-netconf-with-defaults">{mode}'
                "</with-defaults></get-config>")
        data = etree.fromstring(rpc(nc, body).xml.encode())
        return [e.text for e in data.iter(f"{{{CT}}}mtu")]

    assert mtu("explicit") == []
    assert mtu("report-all") == ["1500"]
    assert mtu("report-all-tagged") == ["1500"]
    assert mtu("trim") == []
    assert error(mtu, "everything").tag == "invalid-value"


# -- copy-config / delete-config -------------------------------------------------

def test_copy_running_to_startup_and_delete_startup(nc):
    nc.edit_config(target="running", config=name_cfg("boot"))
    nc.copy_config(source="running", target="startup")
    assert names(nc, "startup") == ["boot"]
    nc.delete_config(target="startup")
    assert names(nc, "startup") == []
    assert names(nc) == ["boot"]


def test_copy_inline_config_replaces_running(nc):
    nc.edit_config(target="running", config=name_cfg("old"))
    rpc(nc, f'<copy-config xmlns="{NC}"><target><running/></target><source>'
            f'<config><settings xmlns="{CT}"><name>inline</name></settings>{KEEP_ADMIN}</config></source>'
            "</copy-config>")
    assert names(nc) == ["inline"]


def test_copy_invalid_inline_config_changes_nothing(nc):
    nc.edit_config(target="running", config=name_cfg("old"))
    err = error(rpc, nc, f'<copy-config xmlns="{NC}"><target><running/></target><source>'
                         f'<config><settings xmlns="{CT}"><mtu>1</mtu></settings></config></source></copy-config>')
    assert err.tag == "invalid-value"
    assert names(nc) == ["old"]


def test_copy_and_delete_errors(nc):
    assert error(nc.delete_config, target="running").tag == "invalid-value"
    assert error(nc.copy_config, source="running", target="running").tag == "invalid-value"
    err = error(rpc, nc, f'<copy-config xmlns="{NC}"><target><running/></target></copy-config>')
    assert err.tag == "missing-element"


# -- candidate, validate, commit, discard ----------------------------------------------

def test_candidate_commit_and_discard(nc):
    nc.edit_config(target="candidate", config=name_cfg("cand"))
    assert names(nc, "candidate") == ["cand"]
    assert names(nc) == []
    nc.discard_changes()
    assert names(nc, "candidate") == []
    nc.edit_config(target="candidate", config=name_cfg("cand"))
    nc.commit()
    assert names(nc) == ["cand"]


def test_invalid_candidate_fails_commit(nc):
    nc.edit_config(target="candidate", config=cfg(f'<servers xmlns="{CT}"><server><name>s</name></server>'
                                                  "</servers>"), test_option="set")
    assert error(nc.validate, source="candidate").tag == "data-missing"
    err = error(nc.commit)
    assert err.tag == "data-missing"
    assert names(nc) == []
    nc.discard_changes()


def test_validate_inline_config(nc):
    ok = f'<validate xmlns="{NC}"><source><config><settings xmlns="{CT}"><mtu>1400</mtu></settings>' \
         "</config></source></validate>"
    rpc(nc, ok)
    assert error(rpc, nc, ok.replace("1400", "1")).tag == "invalid-value"


# -- locks -------------------------------------------------------------------------

def test_lock_denied_names_the_holder(server, nc):
    with server.connect() as other:
        nc.lock("running")
        try:
            err = error(other.lock, "running")
            assert err.tag == "lock-denied"
            assert f"<session-id>{nc.session_id}</session-id>" in err.info.replace(" ", "").replace(
                'xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"', "")
            # the lock holder's running is protected from others
            assert error(other.edit_config, target="running", config=name_cfg("x")).tag == "in-use"
            nc.edit_config(target="running", config=name_cfg("mine"))
            assert error(other.unlock, "running").tag == "operation-failed"
        finally:
            nc.unlock("running")
        other.lock("running")
        other.unlock("running")


def test_lock_twice_and_unlock_unlocked(nc):
    nc.lock("startup")
    assert error(nc.lock, "startup").tag == "lock-denied"
    nc.unlock("startup")
    assert error(nc.unlock, "startup").tag == "operation-failed"


def test_candidate_lock_refused_while_modified(server, nc):
    with server.connect() as other:
        other.edit_config(target="candidate", config=name_cfg("dirty"))
        err = error(nc.lock, "candidate")
        assert err.tag == "lock-denied"
        other.discard_changes()
    nc.lock("candidate")
    nc.unlock("candidate")


def test_locks_released_when_session_ends(server):
    m = server.connect()
    m.lock("running")
    m.close_session()
    with server.connect() as other:
        other.lock("running")
        other.unlock("running")


def test_kill_session(server, nc):
    victim = server.connect()
    victim.lock("running")
    sid = victim.session_id
    nc.kill_session(sid)
    nc.lock("running")  # the victim's lock went with it
    nc.unlock("running")
    assert error(nc.kill_session, nc.session_id).tag == "invalid-value"
    assert error(nc.kill_session, "99999").tag == "invalid-value"
    with pytest.raises(Exception):
        victim.get_config(source="running")


def test_closed_session_drops_uncommitted_candidate_lock(server):
    m = server.connect()
    m.lock("candidate")
    m.edit_config(target="candidate", config=name_cfg("unsaved"))
    m.close_session()
    with server.connect() as other:
        # the lock holder left: its candidate changes are discarded (RFC 6241 §7.5)
        assert names(other, "candidate") == []
        other.lock("candidate")
        other.unlock("candidate")
