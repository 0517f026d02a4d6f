"""State workload: <get> of a large trust pool (500 downloaded CA certificates), filtered to
trustplane-pki's state and unfiltered, so that the cost of building state data shows.

Run alone: .venv/bin/python bench/state.py [source tree to serve, default this one]
"""
from __future__ import annotations

import asyncio
import datetime
import sys
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).resolve().parent))

from client import connect  # noqa: E402  (bench/client.py)
from device import Device  # noqa: E402  (bench/device.py)

ACT = "http://cisco.com/ns/yang/Cisco-IOS-XR-crypto-act"
PKI = "urn:trustplane:yang:trustplane-pki"
GET_POOL = f'<get><filter type="subtree"><pki xmlns="{PKI}"/></filter></get>'
GET_ALL = "<get/>"
CERTS = 500
ROUNDS = 40


def _bundle(n: int) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    out = []
    for i in range(n):
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Bench CA {i} & <Co>")])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
                .sign(key, hashes.SHA256()))
        out.append(cert.public_bytes(serialization.Encoding.PEM))
    return b"".join(out)


async def _time(c, body: str, rounds: int) -> list[float]:
    return [await c.timed(body) for _ in range(rounds)]


async def _measure(port: int, password: str) -> dict:
    c = await connect("127.0.0.1", port, "admin", password)
    try:
        reply = await c.rpc(f'<ca-trustpool-import-url xmlns="{ACT}"><url>disk0:/pool.pem</url>'
                            "</ca-trustpool-import-url>")
        if b"<rpc-error" in reply:
            raise RuntimeError(reply.decode(errors="replace")[:300])
        await _time(c, GET_POOL, 3)  # warm up
        return {"pool": sorted(await _time(c, GET_POOL, ROUNDS)), "all": sorted(await _time(c, GET_ALL, ROUNDS))}
    finally:
        await c.close()


def run(tmp: Path, root: Path) -> dict:
    device = Device(tmp / "state", root)
    (device.state / "fs" / "disk0:" / "pool.pem").write_bytes(_bundle(CERTS))
    with device.serving() as (port, _pid):
        return asyncio.run(_measure(port, device.password))


def report(r: dict) -> str:
    def ms(samples):
        return f"median {samples[len(samples) // 2] * 1e3:.1f} ms, best {samples[0] * 1e3:.1f} ms"
    return (f"get of a {CERTS}-certificate trust pool over {ROUNDS} RPCs: filtered to trustplane-pki "
            f"{ms(r['pool'])}; unfiltered {ms(r['all'])}")


if __name__ == "__main__":
    root = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="tp-bench-") as d:
        print(report(run(Path(d), root)))
