"""PKI workload: how a small get-config from another session fares while 4 RSA-4096 key
pairs are generated (each key-generate-rsa on its own session). Key generation runs off the
event loop, so the target is a p99 under 10 ms.

Run alone: .venv/bin/python bench/pki.py
"""
from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from client import connect  # bench/client.py
from device import Device  # bench/device.py

ACT = "http://cisco.com/ns/yang/Cisco-IOS-XR-crypto-act"
GET = ('<get-config><source><running/></source><filter type="subtree">'
       '<system xmlns="urn:ietf:params:xml:ns:yang:ietf-system"><authentication><user><name>admin</name>'
       "</user></authentication></system></filter></get-config>")
KEYS = 4


def _percentile(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * p))]


def _stats(samples: list[float]) -> dict:
    return {"n": len(samples), "p50": _percentile(samples, 0.5), "p99": _percentile(samples, 0.99), "max": max(samples)}


async def _gets_until(c, done: asyncio.Event | None, count: int) -> list[float]:
    times = []
    while (done is None and len(times) < count) or (done is not None and not done.is_set()):
        times.append(await c.timed(GET))
    return times


async def _measure(port: int, password: str) -> dict:
    reader = await connect("127.0.0.1", port, "admin", password)
    makers = [await connect("127.0.0.1", port, "admin", password) for _ in range(KEYS)]
    try:
        idle = await _gets_until(reader, None, 500)
        done = asyncio.Event()

        async def generate(c, i):
            reply = await c.rpc(f'<key-generate-rsa xmlns="{ACT}"><key-label>bench-{i}</key-label>'
                                "<key-modulus>4096</key-modulus></key-generate-rsa>")
            if b"rpc-error" in reply:
                raise RuntimeError(reply.decode(errors="replace")[:300])

        t = time.perf_counter()
        jobs = asyncio.gather(*(generate(c, i) for i, c in enumerate(makers)))
        jobs.add_done_callback(lambda _f: done.set())
        busy = await _gets_until(reader, done, 0)
        await jobs
        keygen = time.perf_counter() - t
    finally:
        for c in [reader, *makers]:
            await c.close()
    return {"idle": _stats(idle), "during_keygen": _stats(busy), "keygen_4x_rsa4096_s": keygen}


def run(tmp: Path) -> dict:
    device = Device(tmp / "pki")
    with device.serving() as (port, _pid):
        return asyncio.run(_measure(port, device.password))


def report(r: dict) -> str:
    i, b = r["idle"], r["during_keygen"]
    return (f"small get-config while {KEYS} RSA-4096 keys are generated ({r['keygen_4x_rsa4096_s']:.1f} s): "
            f"p50 {b['p50'] * 1e3:.2f} ms, p99 {b['p99'] * 1e3:.2f} ms, max {b['max'] * 1e3:.2f} ms over {b['n']} RPCs "
            f"(target p99 < 10 ms); idle p50 {i['p50'] * 1e3:.2f} ms, p99 {i['p99'] * 1e3:.2f} ms")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="tp-bench-") as d:
        print(report(run(Path(d))))
