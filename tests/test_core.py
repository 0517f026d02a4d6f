"""The protocol-neutral core: it loads and commits without any transport, its errors are
domain errors, and NETCONF turns them into rpc-errors in one place."""
import ast
import importlib
import inspect
import pkgutil
import subprocess
import sys

import pytest

import backends
from backends.engine.errors import EngineError
from conftest import ROOT
from nc_server.errors import RpcError, wire_errors
from yangcore import datastore
from yangcore.backend import Backend
from yangcore.bus import Bus, Notification
from yangcore.commit import Configuration
from yangcore.nacm import AccessDenied, OperationDenied, Rule, first_match
from yangcore.schema import build_context

ACM = "urn:ietf:params:xml:ns:yang:ietf-netconf-acm"
NACM = "/ietf-netconf-acm:nacm"
TRANSPORTS = ("nc_server", "asyncssh", "lxml", "ncclient")


def core_modules() -> list[str]:
    return sorted(f"yangcore.{p.stem}" for p in (ROOT / "yangcore").glob("*.py") if p.stem != "__init__")


def test_the_core_loads_no_transport():
    code = ("import importlib, sys\n"
            f"for m in {core_modules()!r}: importlib.import_module(m)\n"
            "print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = out.stdout.split()
    assert "yangcore.commit" in loaded
    assert [m for m in loaded if m.split(".")[0] in TRANSPORTS] == []
    # of the backends, only the error base: the core finds backends through its registry
    assert [m for m in loaded if m.split(".")[0] == "backends"] == ["backends", "backends.engine",
                                                                     "backends.engine.errors"]


def test_the_core_source_imports_no_transport():
    for path in (ROOT / "yangcore").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for name in names:
                assert name.split(".")[0] not in TRANSPORTS, f"{path.name} imports {name}"


# -- the commit pipeline, with no transport ------------------------------------------------

class Refuses(Backend):
    def __init__(self):
        super().__init__(name="refuses", config=(NACM,))

    def validate(self, diff):
        if any(c.path.endswith("/write-default") for c in diff.changes):
            raise EngineError("no-writes", "write-default stays as it is", "invalid-value", f"{NACM}/write-default")


@pytest.fixture
def core(tmp_path):
    ctx = build_context(["ietf-netconf-acm", "ietf-netconf-notifications"])
    bus = Bus(ctx)
    events = []
    bus.subscribe(events.append)
    config = Configuration(ctx, [Refuses()], tmp_path, bus)
    (tmp_path / "running.xml").write_text(nacm("read-default", "permit"))
    config.running.load()
    yield config, events
    for store in (config.running, config.startup, config.candidate):
        store.replace(None)


def nacm(leaf: str, value: str):
    return f'<nacm xmlns="{ACM}"><{leaf}>{value}</{leaf}></nacm>'


def test_a_commit_persists_and_announces_on_the_bus(core, tmp_path):
    config, events = core
    tree = datastore.parse_config(config.ctx, nacm("read-default", "deny"), validate_now=False)
    config.commit(tree, config.running, origin="client-7")
    assert (tmp_path / "running.xml").read_text() == nacm("read-default", "deny")
    assert [(e.datastore, [(c.op, c.path, c.value) for c in e.changes], e.origin) for e in events] == [
        ("running", [("replace", f"{NACM}/read-default", "deny")], "client-7")]


def test_a_backend_refusal_is_its_own_error_and_changes_nothing(core, tmp_path):
    config, events = core
    tree = datastore.parse_config(config.ctx, nacm("write-default", "permit"), validate_now=False)
    with pytest.raises(EngineError) as info:
        config.commit(tree, config.running)
    assert (info.value.code, info.value.tag, info.value.path) == ("no-writes", "invalid-value",
                                                                  f"{NACM}/write-default")
    assert (tmp_path / "running.xml").read_text() == nacm("read-default", "permit")
    assert config.running.tree.find_path(f"{NACM}/write-default").value() == "deny"
    assert events == []


def test_the_bus_drops_a_notification_that_does_not_match_its_schema(core):
    config, events = core
    config.bus.notify('<netconf-session-start xmlns="urn:ietf:params:xml:ns:yang:ietf-netconf-notifications">'
                      "<username>alice</username><session-id>3</session-id></netconf-session-start>")
    config.bus.notify('<netconf-session-start xmlns="urn:ietf:params:xml:ns:yang:ietf-netconf-notifications">'
                      "<session-id>x</session-id></netconf-session-start>")
    assert [type(e) for e in events] == [Notification]
    assert "<username>alice</username>" in events[0].body


# -- NACM: one rule-matching loop ------------------------------------------------------------

RULES = [
    Rule("ietf-netconf", "rpc", "edit-config", frozenset({"exec"}), False),
    Rule("ietf-system", "data", "/ietf-system:system/authentication", frozenset({"*"}), False),
    Rule("nc-notifications", "notification", "*", frozenset({"read"}), True),
    Rule("*", None, None, frozenset({"read"}), True),
]


@pytest.mark.parametrize("module, kind, target, op, expected", [
    ("ietf-netconf", "rpc", "edit-config", "exec", False),
    ("ietf-netconf", "rpc", "get", "exec", None),  # the module-only rule grants read, not exec
    ("ietf-netconf", "rpc", "get", "read", True),
    ("ietf-system", "data", "/ietf-system:system/authentication/user[name='a']/password", "update", False),
    ("ietf-system", "data", "/ietf-system:system/authentication", "read", False),
    ("ietf-system", "data", "/ietf-system:system/hostname", "read", True),
    ("ietf-system", "data", "/ietf-system:system/hostname", "update", None),
    ("nc-notifications", "notification", "replayComplete", "read", True),
    ("ietf-netconf-notifications", "notification", "netconf-config-change", "exec", None),
])
def test_first_match(module, kind, target, op, expected):
    assert first_match(RULES, module, kind, target, op) is expected


# -- errors ------------------------------------------------------------------------------

def test_every_error_of_the_engine_and_backends_is_an_engine_error():
    found = []
    for info in pkgutil.walk_packages(backends.__path__, "backends."):
        module = importlib.import_module(info.name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, Exception) and cls.__module__ == info.name and not name.startswith("_"):
                found.append(cls)
                assert issubclass(cls, EngineError), f"{info.name}.{name}"
    assert len(found) >= 20


def test_a_domain_error_becomes_one_rpc_error():
    err, = wire_errors(EngineError("ov-serial-mismatch", "the voucher names another serial", "invalid-value",
                                   "/a:b"))
    assert (err.type, err.tag, err.app_tag, err.path, err.message) == (
        "application", "invalid-value", "ov-serial-mismatch", "/a:b", "the voucher names another serial")
    err, = wire_errors(OperationDenied('access to the operation "get" is denied'))
    assert (err.type, err.tag, err.app_tag) == ("protocol", "access-denied", None)
    err, = wire_errors(AccessDenied("update access to /a:b is denied", "/a:b"))
    assert (err.type, err.tag, err.path) == ("application", "access-denied", "/a:b")


def test_an_illegal_error_tag_or_type_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown error-tag"):
        EngineError("code", "message", "no-such-tag")
    with pytest.raises(ValueError, match="unknown error-tag"):
        EngineError("code", "message", "lock-denied")  # a protocol error, never a domain one
    with pytest.raises(ValueError, match="unknown error-tag"):
        RpcError("no-such-tag", "message")
    with pytest.raises(ValueError, match="error-type rpc is not allowed with error-tag in-use"):
        RpcError("in-use", "message", type="rpc")
    with pytest.raises(ValueError, match="error-type application is not allowed with error-tag lock-denied"):
        RpcError("lock-denied", "message", type="application")
    # without a type: application, or the one type a protocol-only tag has
    assert [RpcError(t, "m").type for t in ("in-use", "lock-denied", "malformed-message")] == [
        "application", "protocol", "rpc"]
