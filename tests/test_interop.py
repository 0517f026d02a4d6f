"""Third-party NETCONF clients against the server: netconf-console2 and
Debian's yangcli (which always exits 0, so its output is what is checked)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PASSWORD

DEV = "urn:trustplane:yang:trustplane-device"
CONSOLE = str(Path(sys.executable).with_name("netconf-console2"))


def console(server, *args, rc=0) -> str:
    out = subprocess.run([CONSOLE, "--host", server.host, "--port", str(server.port), "-u", "admin",
                          "-p", PASSWORD, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == rc, out.stdout + out.stderr
    return out.stdout


def test_netconf_console2(server, nc):
    hello = console(server, "--hello")
    assert "urn:ietf:params:netconf:base:1.1" in hello and "capability:candidate:1.0" in hello
    serial = json.loads((server.state_dir / "device.json").read_text())["nodes"][0]["serial-number"]
    assert serial in console(server, "--get", "-x", "/device/inventory/node")
    assert "<ok" in console(server, "--ns", f"d={DEV}", "--set", "/d:device/d:system/d:domain-name=lab.example")
    assert "<domain-name>lab.example</domain-name>" in console(server, "--get-config", "-x", "/device/system")
    assert "<ok" in console(server, "--ns", f"d={DEV}", "--delete", "/d:device/d:system/d:domain-name")
    out = console(server, "--ns", f"d={DEV}", "--del-operation", "delete", "--delete",
                  "/d:device/d:system/d:domain-name", rc=255)
    assert "<error-tag>data-missing</error-tag>" in out
    # a sequence of operations on one session
    out = console(server, "--lock", "--ns", f"d={DEV}", "--set", "/d:device/d:system/d:hostname=edge-9",
                  "--db", "candidate", "--commit", "--unlock")
    assert out.count("<ok") >= 3, out
    assert "<hostname>edge-9</hostname>" in console(server, "--get-config", "-x", "/device/system/hostname")


@pytest.mark.skipif(shutil.which("yangcli") is None, reason="Debian yangcli is not installed")
def test_yangcli(server, tmp_path):
    serial = json.loads((server.state_dir / "device.json").read_text())["nodes"][1]["serial-number"]
    out = subprocess.run(["yangcli", f"--server={server.host}", f"--ncport={server.port}", "--user=admin",
                          f"--password={PASSWORD}", "--batch-mode", "--run-command=xget /device/inventory",
                          "--log-level=info"], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                         env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    text = out.stdout + out.stderr
    assert "RPC Data Reply" in text, text
    assert serial in text and "0/RP1/CPU0" in text
