"""The server log has one line per event: text a client sends cannot start a line of its own."""
import logging
import sys

from conftest import rpc
from trustplane.logs import OneLineFormatter, escape_controls

ACT = "http://cisco.com/ns/yang/Cisco-IOS-XR-crypto-act"
FORGED = "2026-12-05 10:00:00,000 WARNING nc_server.ssh: forged"


def test_newline_in_a_key_label_stays_on_its_line(server):
    with server.connect() as m:
        rpc(m, f'<key-generate-ed25519 xmlns="{ACT}"><key-label>lab&#10;{FORGED}&#13;&#x2028;</key-label>'
               "</key-generate-ed25519>")
    lines = server.log().splitlines()
    assert not any(line.startswith(FORGED) for line in lines)
    assert any(line.endswith(f"(lab\\x0a{FORGED}\\x0d\\u2028)") for line in lines)


def test_tracebacks_keep_their_lines():
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "bad\x1b[31m %s", ("a\nb",), None)
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    text = OneLineFormatter("%(message)s").format(record)
    first, *rest = text.splitlines()
    assert first == "bad\\x1b[31m a\\x0ab"
    assert rest[0] == "Traceback (most recent call last):" and rest[-1] == "ValueError: boom"


def test_escapes_every_control_character():
    assert escape_controls("a\tb\x00\x7f\x85\u2029é") == "a\\x09b\\x00\\x7f\\x85\\u2029é"
