"""Confirmed commit (:confirmed-commit:1.1) over SSH: confirm, timeout, extend,
cancel, persist/persist-id across sessions and restarts, session-end rollback."""
import signal
import time

import pytest
from lxml import etree
from ncclient.operations.rpc import RPCError

from conftest import CT, NC, ServerProcess, rpc

NS = {"ct": CT}


def name_cfg(name: str) -> str:
    return f'<config xmlns="{NC}"><settings xmlns="{CT}"><name>{name}</name></settings></config>'


def names(m, source="running") -> list[str]:
    reply = m.get_config(source=source, filter=("xpath", (NS, "/ct:settings/ct:name")))
    return [e.text for e in etree.fromstring(reply.xml.encode()).iter(f"{{{CT}}}name")]


def commit(m, *parts: str):
    return rpc(m, f'<commit xmlns="{NC}">{"".join(parts)}</commit>')


def wait_for(predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def stage(m, name):
    m.edit_config(target="candidate", config=name_cfg(name))


def test_confirm_keeps_the_change(nc):
    stage(nc, "a")
    commit(nc, "<confirmed/><confirm-timeout>30</confirm-timeout>")
    assert names(nc) == ["a"]
    commit(nc)
    time.sleep(0.1)
    assert names(nc) == ["a"]


def test_timeout_rolls_back(nc):
    stage(nc, "before")
    nc.commit()
    stage(nc, "after")
    commit(nc, "<confirmed/><confirm-timeout>1</confirm-timeout>")
    assert names(nc) == ["after"]
    assert wait_for(lambda: names(nc) == ["before"])
    assert names(nc, "candidate") == ["before"]


def test_extension_keeps_the_first_backup(nc):
    stage(nc, "orig")
    nc.commit()
    stage(nc, "one")
    commit(nc, "<confirmed/><confirm-timeout>30</confirm-timeout>")
    stage(nc, "two")
    commit(nc, "<confirmed/><confirm-timeout>1</confirm-timeout>")
    assert names(nc) == ["two"]
    assert wait_for(lambda: names(nc) == ["orig"])


def test_cancel_commit(nc):
    stage(nc, "orig")
    nc.commit()
    stage(nc, "tentative")
    commit(nc, "<confirmed/>")
    rpc(nc, f'<cancel-commit xmlns="{NC}"/>')
    assert names(nc) == ["orig"]
    with pytest.raises(RPCError) as exc:
        rpc(nc, f'<cancel-commit xmlns="{NC}"/>')
    assert exc.value.tag == "operation-failed"


def test_session_end_rolls_back_without_persist(server, nc):
    stage(nc, "orig")
    nc.commit()
    m = server.connect()
    stage(m, "temp")
    commit(m, "<confirmed/>")
    assert names(nc) == ["temp"]
    m.close_session()
    assert wait_for(lambda: names(nc) == ["orig"])


def test_persist_survives_the_session_and_needs_the_id(server, nc):
    stage(nc, "orig")
    nc.commit()
    m = server.connect()
    stage(m, "persisted")
    commit(m, "<confirmed/><persist>tok-1</persist><confirm-timeout>60</confirm-timeout>")
    m.close_session()
    time.sleep(0.3)
    assert names(nc) == ["persisted"]
    # another session: a plain commit is refused, a wrong persist-id too
    with pytest.raises(RPCError) as exc:
        commit(nc)
    assert exc.value.tag == "in-use"
    with pytest.raises(RPCError) as exc:
        commit(nc, "<persist-id>wrong</persist-id>")
    assert exc.value.tag == "invalid-value"
    commit(nc, "<persist-id>tok-1</persist-id>")
    assert names(nc) == ["persisted"]


def test_other_session_cannot_confirm_without_persist(server, nc):
    stage(nc, "orig")
    nc.commit()
    stage(nc, "mine")
    commit(nc, "<confirmed/>")
    with server.connect() as other:
        with pytest.raises(RPCError) as exc:
            commit(other)
        assert (exc.value.tag, exc.value.app_tag) == ("in-use", "confirmed-commit-pending")
    commit(nc)


def test_bad_parameters(nc):
    for body in ("<confirm-timeout>10</confirm-timeout>", "<confirmed/><confirm-timeout>0</confirm-timeout>",
                 "<confirmed/><confirm-timeout>soon</confirm-timeout>", "<persist-id>none</persist-id>"):
        with pytest.raises(RPCError) as exc:
            commit(nc, body)
        assert exc.value.tag == "invalid-value", body


def test_persisted_confirmed_commit_survives_restart(tmp_path):
    srv = ServerProcess(tmp_path / "state").start()
    try:
        with srv.connect() as m:
            stage(m, "orig")
            m.commit()
            stage(m, "pending")
            commit(m, "<confirmed/><persist>keep</persist><confirm-timeout>3</confirm-timeout>")
        srv.stop()
        srv.start()
        with srv.connect() as m:
            assert names(m) == ["pending"]
            assert wait_for(lambda: names(m) == ["orig"])
    finally:
        srv.stop()


def test_unpersisted_confirmed_commit_rolls_back_on_restart(tmp_path):
    srv = ServerProcess(tmp_path / "state").start()
    try:
        m = srv.connect()
        stage(m, "orig")
        m.commit()
        stage(m, "pending")
        commit(m, "<confirmed/><confirm-timeout>300</confirm-timeout>")
        srv.stop(signal.SIGKILL)  # no chance to roll back on session end
        srv.start()
        with srv.connect() as m:
            assert names(m) == ["orig"]
    finally:
        srv.stop()


OPS_CFG = (f'<config xmlns="{NC}"><system xmlns="urn:ietf:params:xml:ns:yang:ietf-system"><authentication>'
           "<user><name>admin</name></user><user><name>ops</name><password>$0$ops-pw</password></user>"
           "</authentication></system><nacm xmlns=\"urn:ietf:params:xml:ns:yang:ietf-netconf-acm\"><groups>"
           "<group><name>ops</name><user-name>ops</user-name></group></groups><rule-list><name>ops</name>"
           "<group>ops</group><rule><name>all</name><module-name>*</module-name><access-operations>*"
           "</access-operations><action>permit</action></rule></rule-list></nacm></config>")


def test_the_recovery_user_cancels_another_users_persistent_commit_after_a_restart(tmp_path):
    srv = ServerProcess(tmp_path / "state").start()
    try:
        with srv.connect() as m:
            m.edit_config(target="running", config=OPS_CFG)
            stage(m, "orig")
            m.commit()
        with srv.connect(username="ops", password="ops-pw") as ops:
            stage(ops, "held")
            commit(ops, "<confirmed/><persist>ops-tok</persist><confirm-timeout>4294967295</confirm-timeout>")
        srv.stop()
        srv.start()
        with srv.connect(username="ops", password="ops-pw") as ops:
            for op in ("<commit/>", "<cancel-commit/>"):
                with pytest.raises(RPCError) as exc:
                    rpc(ops, op.replace("/>", f' xmlns="{NC}"/>'))
                assert (exc.value.tag, exc.value.app_tag, exc.value.message) == (
                    "in-use", "confirmed-commit-pending", "a persistent confirmed commit is pending; give its persist-id")
            with pytest.raises(RPCError) as exc:
                rpc(ops, f'<cancel-commit xmlns="{NC}"><persist-id>guess</persist-id></cancel-commit>')
            assert (exc.value.tag, exc.value.app_tag) == ("invalid-value", "wrong-persist-id")
        with srv.connect() as m:
            assert names(m) == ["held"]
            with pytest.raises(RPCError) as exc:
                commit(m)
            assert (exc.value.tag, exc.value.app_tag, exc.value.message) == (
                "in-use", "confirmed-commit-pending", "a persistent confirmed commit is pending; give its persist-id "
                "(the recovery user may cancel it with <cancel-commit/>)")
            rpc(m, f'<cancel-commit xmlns="{NC}"/>')
            assert names(m) == ["orig"]
            assert not (srv.state_dir / "datastore" / "confirmed-commit.json").exists()
            stage(m, "mine")
            m.commit()
            assert names(m) == ["mine"]
        assert "cancels the confirmed commit of a session before the restart" in srv.log()
    finally:
        srv.stop()


def test_the_recovery_user_cancels_another_sessions_commit(server, nc):
    stage(nc, "orig")
    nc.commit()
    other = server.connect()
    try:
        stage(other, "theirs")
        commit(other, "<confirmed/><confirm-timeout>600</confirm-timeout>")
        rpc(nc, f'<cancel-commit xmlns="{NC}"/>')
        assert names(nc) == ["orig"]
        commit(other)  # nothing pending any more: a plain commit of the discarded candidate
        assert names(nc) == ["orig"]
    finally:
        other.close_session()
