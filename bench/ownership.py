"""Ownership workloads: a bulk oshp-ovoc-apply of 1,000 vouchers (2 of them for the device)
over NETCONF, with the server's peak memory while it applies them, and full voucher
verifications per second against `openssl speed` for the voucher's signature algorithm
(ECDSA P-256).

Run alone: .venv/bin/python bench/ownership.py
"""
from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import sys
import tempfile
import time
import tracemalloc
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backends.engine.onboarding import ownership, voucher  # noqa: E402
from backends.engine.onboarding.identity import load_cert_pem, load_key_pem  # noqa: E402
from trustplane import lab_artifacts as lab  # noqa: E402
import openssl_speed  # noqa: E402  (bench/openssl_speed.py)
from summary import summary  # noqa: E402  (bench/summary.py)
from client import connect  # noqa: E402  (bench/client.py)
from device import Device  # noqa: E402  (bench/device.py)

ACT = "http://cisco.com/ns/yang/Cisco-IOS-XR-ownership-act"


def _artifacts(state: Path, lab_dir: Path, count: int):
    now = datetime.now(timezone.utc)
    profile = json.loads((state / "device.json").read_text())
    local = [n["serial-number"] for n in profile["nodes"]]
    ca_key = load_key_pem((lab_dir / "masa-root.key").read_bytes())
    ca = load_cert_pem((lab_dir / "masa-root.pem").read_bytes())
    masa_key, masa = lab.make_masa(ca_key, ca, now - timedelta(hours=1))
    pdc_key, pdc = lab.make_owner_ca(now - timedelta(hours=1))
    _oc_key, oc, chain = lab.make_owner_cert(pdc_key, pdc, now - timedelta(hours=1))
    serials = local + [f"BEN{26:02d}{(i % 52) + 1:02d}{i:04d}" for i in range(count - len(local))]
    vouchers = [(s, lab.make_voucher(masa_key, masa, ca, s, pdc, now - timedelta(minutes=5))) for s in serials]
    disk = state / "fs" / "disk0:"
    (disk / "bulk.tar.gz").write_bytes(lab.bundle([(f"{s}.vcj", data) for s, data in vouchers]))
    (disk / "oc.cms").write_bytes(lab.owner_cert_cms(oc, chain, pdc))
    return vouchers, ca, now


def _heap_peaks(bundle: bytes, serials: set[str], ca, at: datetime) -> tuple[int, int]:
    """The Python heap's peak (bytes, tracemalloc) while the bundle is selected from, member by
    member as the device does, and with all its members read first, for comparison."""
    peaks = []
    for read in (lambda: ownership.read_bundle(bundle), lambda: list(ownership.read_bundle(bundle))):
        tracemalloc.start()
        ownership.select(read(), serials, anchors=[ca], at=at, idevids={})
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    return peaks[0], peaks[1]


def _verify_rate(vouchers: list[tuple[str, bytes]], ca, at: datetime, seconds: float = 2.0) -> float:
    """Full verifications per second, each of a different voucher (all from one MASA, as in a bundle)."""
    queue = itertools.cycle(vouchers)

    def verify_next() -> None:
        serial, data = next(queue)
        voucher.verify(data, anchors=[ca], serial=serial, at=at)
    return openssl_speed.rate(verify_next, seconds)


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


async def _apply_times(port: int, password: str, rounds: int, pid: int) -> tuple[list[float], list[int], list[int]]:
    """Each apply's time, the server's resident size before it and its peak during it (KiB):
    the peak is reset before each apply (clear_refs 5, Linux 4.0 and later)."""
    c = await connect("127.0.0.1", port, "admin", password)
    times, before, peaks = [], [], []
    try:
        for _ in range(rounds):
            Path(f"/proc/{pid}/clear_refs").write_text("5")
            before.append(_status_kib(pid, "VmRSS"))
            t = time.perf_counter()
            reply = await c.rpc(f'<oshp-ovoc-apply xmlns="{ACT}"><ov-path>disk0:/bulk.tar.gz</ov-path>'
                                "<oc-path>disk0:/oc.cms</oc-path></oshp-ovoc-apply>")
            times.append(time.perf_counter() - t)
            peaks.append(_status_kib(pid, "VmHWM"))
            if b"rpc-error" in reply:
                raise RuntimeError(reply.decode(errors="replace")[:500])
    finally:
        await c.close()
    return times, before, peaks


def run(tmp: Path, count: int = 1000, rounds: int = 5) -> dict:
    device = Device(tmp / "own")
    state = device.state
    t = time.perf_counter()
    vouchers, ca, now = _artifacts(state, state.with_name("own-lab"), count)
    made = time.perf_counter() - t
    with device.serving() as (port, pid):
        times, rss_before, rss_peaks = asyncio.run(_apply_times(port, device.password, rounds, pid))
    ours, theirs = [], []
    for _ in range(5):  # interleaved, so both see the same machine
        ours.append(_verify_rate(vouchers, ca, now))
        theirs.append(openssl_speed.verify_per_s("ecdsap256"))
    bundle = (state / "fs" / "disk0:" / "bulk.tar.gz").read_bytes()
    streamed, held = _heap_peaks(bundle, {s for s, _data in vouchers[:2]}, ca, now)
    bundle_bytes = len(bundle)
    return {"vouchers": count, "lab_issue_s": made, "apply_s": summary(times), "bundle_bytes": bundle_bytes,
            "members_bytes": sum(len(data) for _s, data in vouchers), "heap_peak_streamed": streamed,
            "heap_peak_all_members": held,
            "rss_before_kib": statistics.median(rss_before), "rss_peak_kib": statistics.median(rss_peaks),
            "rss_growth_kib": [p - b for p, b in zip(rss_peaks, rss_before)],
            "voucher_verify_per_s": statistics.median(ours),
            "openssl_ecdsa_p256_verify_per_s": statistics.median(theirs),
            "verify_round_ratios": [a / b for a, b in zip(ours, theirs)]}


def report(r: dict) -> str:
    return (f"oshp-ovoc-apply of {r['vouchers']} vouchers (2 local) median: {r['apply_s']['median'] * 1e3:.0f} ms "
            f"(min {r['apply_s']['min'] * 1e3:.0f}, max {r['apply_s']['max'] * 1e3:.0f})\n"
            f"server resident memory: {r['rss_before_kib'] / 1024:.1f} MiB before, peak {r['rss_peak_kib'] / 1024:.1f} "
            f"MiB while applying (medians; growth per round {min(r['rss_growth_kib'])}-{max(r['rss_growth_kib'])} "
            f"KiB); bundle {r['bundle_bytes'] / 1024:.0f} KiB, its members {r['members_bytes'] / 1024:.0f} KiB\n"
            f"selecting from the bundle in-process, Python heap peak: {r['heap_peak_streamed'] / 1024:.0f} KiB member by "
            f"member, {r['heap_peak_all_members'] / 1024:.0f} KiB with all members read first\n"
            f"voucher verify/s (CMS + chain + JSON), median of 5 interleaved: trustplane {r['voucher_verify_per_s']:.0f}, openssl ECDSA P-256 "
            f"verify {r['openssl_ecdsa_p256_verify_per_s']:.0f} "
            f"({r['voucher_verify_per_s'] / r['openssl_ecdsa_p256_verify_per_s']:.2f}x; rounds "
            f"{min(r['verify_round_ratios']):.2f}-{max(r['verify_round_ratios']):.2f}x)")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="tp-bench-") as d:
        print(report(run(Path(d))))
