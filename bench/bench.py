"""trustplane side by side with Debian's yuma123 netconfd, plus crypto against OpenSSL.

Run by `make bench`. Both servers listen on loopback and serve bench/yang/bench-list.yang.
netconfd runs behind a private sshd (own config, host key and port in a temp dir, a
throwaway user that is deleted at the end). Everything started is stopped by PID,
also on failure. The client is bench/client.py (asyncssh, no polling sleeps).
Server CPU comes from /proc/<pid>/stat over the server's process tree (for netconfd:
netconfd plus its sshd and netconf-subsystem processes).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import openssl_speed  # bench/openssl_speed.py
import ownership  # bench/ownership.py
import pki  # bench/pki.py
from summary import summary  # bench/summary.py
from client import NC, connect  # bench/client.py, next to this script

ROOT = Path(__file__).resolve().parent.parent

BL = "urn:trustplane:bench:bench-list"
MODULE = ROOT / "bench" / "yang" / "bench-list.yang"
CLK = os.sysconf("SC_CLK_TCK")
BENCH_USER = "tpbench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout=30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


# -- /proc accounting ------------------------------------------------------------

def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (st := _stat(int(d.name))):
            children.setdefault(int(st[1]), []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_cpu(roots: list[int]) -> float:
    """CPU seconds of the roots, their live descendants and their reaped children."""
    total = 0
    for root in roots:
        for p in _descendants(root):
            st = _stat(p)
            if st:
                total += int(st[11]) + int(st[12])  # utime, stime
                if p == root:
                    total += int(st[13]) + int(st[14])  # cutime, cstime
    return total / CLK


def tree_pss_kb(roots: list[int]) -> int:
    total = 0
    for root in roots:
        for p in _descendants(root):
            try:
                m = re.search(r"^Pss:\s+(\d+)", Path(f"/proc/{p}/smaps_rollup").read_text(), re.M)
            except OSError:
                continue
            total += int(m.group(1)) if m else 0
    return total


# -- the two servers -------------------------------------------------------------

class Server:
    name: str
    port: int
    password: str
    username: str
    pids: list[int]

    def client(self):
        return connect("127.0.0.1", self.port, self.username, self.password)


class Trustplane(Server):
    name = "trustplane"

    def __init__(self, tmp: Path, stack: ExitStack):
        self.port, self.username, self.password = free_port(), "admin", secrets.token_urlsafe(12)
        env = dict(os.environ, TRUSTPLANE_ADMIN_PASSWORD=self.password)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trustplane.cli", "serve", "--state-dir", str(tmp / "tp"), "--port",
             str(self.port), "--yang-dir", str(MODULE.parent), "--max-sessions", "256", "--log-level", "WARNING"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=open(tmp / "trustplane.log", "wb"))
        stack.callback(_stop, self.proc)
        line = self.proc.stdout.readline().decode()
        if not line.startswith("trustplane: listening"):
            raise RuntimeError(f"trustplane did not start: {line!r}")
        self.pids = [self.proc.pid]
        self.target = "candidate"


class Netconfd(Server):
    name = "netconfd"

    def __init__(self, tmp: Path, stack: ExitStack):
        self.port, self.username, self.password = free_port(), BENCH_USER, secrets.token_urlsafe(12)
        home = tmp / "ncx-home"
        sock = home / "ncxserver.sock"
        home.mkdir()
        os.chmod(tmp, 0o755)
        # a throwaway user that owns netconfd and logs in through the private sshd
        # (left over only if an earlier run was killed)
        subprocess.run(["pkill", "-KILL", "-u", BENCH_USER], capture_output=True)
        subprocess.run(["userdel", BENCH_USER], capture_output=True)
        subprocess.run(["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/bin/sh", BENCH_USER],
                       check=True)
        stack.callback(subprocess.run, ["userdel", BENCH_USER], check=False)
        stack.callback(subprocess.run, ["pkill", "-KILL", "-u", BENCH_USER], check=False)
        shutil.chown(home, BENCH_USER)
        subprocess.run(["chpasswd"], input=f"{BENCH_USER}:{self.password}\n", text=True, check=True)
        # netconfd accepts only the SSH ports it is told about (--port)
        self.netconfd = subprocess.Popen(
            ["runuser", "-u", BENCH_USER, "--", "/usr/sbin/netconfd", f"--module={MODULE}",
             f"--ncxserver-sockname={sock}", f"--port={self.port}", "--no-startup", f"--superuser={BENCH_USER}",
             "--log-level=error", f"--log={home / 'netconfd.log'}", "--max-sessions=1024",
             "--hello-timeout=0", "--idle-timeout=0"],
            cwd=home, env=dict(os.environ, HOME=str(home)), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        stack.callback(_stop, self.netconfd)
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("netconfd did not create its socket")
        key = tmp / "ssh_host_ed25519_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        config = tmp / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {key}\nPidFile {tmp / 'sshd.pid'}\n"
            "PasswordAuthentication yes\nKbdInteractiveAuthentication no\nPubkeyAuthentication no\n"
            "UsePAM no\nStrictModes no\nMaxStartups 200:30:400\nMaxSessions 200\n"
            f"AllowUsers {BENCH_USER}\nUseDNS no\n"
            f'Subsystem netconf "/usr/sbin/netconf-subsystem --ncxserver-sockname={self.port}@{sock}"\n')
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
        self.sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", str(config), "-E", str(tmp / "sshd.log")])
        stack.callback(_stop, self.sshd)
        wait_port(self.port)
        self.pids = [_child(self.netconfd.pid), self.sshd.pid]
        self.target = "candidate"


def _child(pid: int) -> int:
    """runuser's child: the netconfd process itself."""
    for _ in range(50):
        kids = [p for p in _descendants(pid) if p != pid]
        if kids:
            return kids[0]
        time.sleep(0.1)
    return pid


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- workloads -------------------------------------------------------------------

SMALL_GET = (f'<get-config><source><running/></source><filter type="subtree">'
             f'<bench xmlns="{BL}"><label/></bench></filter></get-config>')


async def session_setup(srv: Server, n: int) -> dict:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        c = await srv.client()
        await c.close()
        times.append(time.perf_counter() - t)
    return summary(times)


async def small_get(srv: Server, n: int) -> dict:
    c = await srv.client()
    await c.rpc(f'<edit-config><target><{srv.target}/></target><config><bench xmlns="{BL}"><label>x</label>'
                "</bench></config></edit-config>")
    await c.rpc("<commit/>")
    reply = await c.rpc(SMALL_GET)
    assert b"<label>x</label>" in reply.replace(b"bl:", b""), reply
    times = []
    for _ in range(n):
        t = time.perf_counter()
        await c.rpc(SMALL_GET)
        times.append(time.perf_counter() - t)
    # CPU ticks are 10 ms: measure over enough RPCs to be precise
    cpu_n = max(n, 3000)
    cpu0 = tree_cpu(srv.pids)
    for _ in range(cpu_n):
        await c.rpc(SMALL_GET)
    cpu = tree_cpu(srv.pids) - cpu0
    await c.close()
    return {**summary(times), "server_cpu_per_rpc": cpu / cpu_n}


async def bulk(srv: Server, k: int, repeat: int) -> dict:
    entries = "".join(f"<entry><name>e{i}</name><value>{i}</value><descr>entry number {i}</descr></entry>"
                      for i in range(k))
    edit = f'<edit-config><target><{srv.target}/></target><config><bench xmlns="{BL}">{entries}</bench></config></edit-config>'
    remove = (f'<edit-config><target><{srv.target}/></target><config><bench xmlns="{BL}" xmlns:nc="{NC}" '
              'nc:operation="remove"/></config></edit-config>')
    get = (f'<get-config><source><running/></source><filter type="subtree"><bench xmlns="{BL}"/></filter>'
           "</get-config>")
    c = await srv.client()
    edits, gets, size = [], [], 0
    for _ in range(repeat):
        t = time.perf_counter()
        r1 = await c.rpc(edit)
        r2 = await c.rpc("<commit/>")
        edits.append(time.perf_counter() - t)
        assert b"<ok/>" in r1 and b"<ok/>" in r2, (r1[:300], r2[:300])
        t = time.perf_counter()
        reply = await c.rpc(get)
        gets.append(time.perf_counter() - t)
        size = len(reply)
        assert reply.count(b"<value>") + reply.count(b":value>") // 2 >= k, reply[:300]
        await c.rpc(remove)
        await c.rpc("<commit/>")
    await c.close()
    return {"edit_commit": summary(edits), "get_config": summary(gets), "reply_bytes": size}


async def concurrency(srv: Server, sessions: int, per_session: int, rounds: int = 5) -> dict:
    """Every session does per_session small get-configs at once; repeated rounds times."""
    clients = [await srv.client() for _ in range(sessions)]

    async def work(c):
        for _ in range(per_session):
            await c.rpc(SMALL_GET)

    rates = []
    cpu0 = tree_cpu(srv.pids)
    for _ in range(rounds):
        t = time.perf_counter()
        await asyncio.gather(*(work(c) for c in clients))
        rates.append(sessions * per_session / (time.perf_counter() - t))
    cpu = tree_cpu(srv.pids) - cpu0
    for c in clients:
        await c.close()
    return {"rpc_per_s": summary(rates), "server_cpu_per_rpc": cpu / (sessions * per_session * rounds)}


async def memory(srv: Server, idle: int) -> dict:
    await asyncio.sleep(0.5)
    base = tree_pss_kb(srv.pids)
    clients = [await srv.client() for _ in range(idle)]
    await asyncio.sleep(0.5)
    loaded = tree_pss_kb(srv.pids)
    for c in clients:
        await c.close()
    return {"idle_kb": base, "with_sessions_kb": loaded, "per_session_kb": (loaded - base) / idle}


async def run_all(servers: list[Server], quick: bool) -> dict:
    """Each workload on every server in turn, so noise on the host hits both alike."""
    ks = (100, 1000) if quick else (100, 1000, 10000)
    out = {s.name: {"bulk": {}, "concurrency": {}} for s in servers}
    steps = [("session_setup", None, lambda s: session_setup(s, 10 if quick else 50)),
             ("small_get", None, lambda s: small_get(s, 100 if quick else 500))]
    steps += [("bulk", str(k), lambda s, k=k: bulk(s, k, 3)) for k in ks]
    steps += [("concurrency", str(n), lambda s, n=n: concurrency(s, n, 100)) for n in (1, 8, 32)]
    steps += [("memory", None, lambda s: memory(s, 20 if quick else 100))]
    for name, key, step in steps:
        for srv in servers:
            print(f"bench: {srv.name} {name} {key or ''}", file=sys.stderr, flush=True)
            result = await step(srv)
            if key is None:
                out[srv.name][name] = result
            else:
                out[srv.name][name][key] = result
    return out


# -- crypto against openssl --------------------------------------------------------

def crypto() -> dict:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    out = {}
    out["openssl_ecdsa_p256_verify_per_s"] = openssl_speed.verify_per_s("ecdsap256")
    out["openssl_rsa2048_verify_per_s"] = openssl_speed.verify_per_s("rsa2048")

    data = b"x" * 1024
    key = ec.generate_private_key(ec.SECP256R1())
    sig = key.sign(data, ec.ECDSA(hashes.SHA256()))
    out["cryptography_ecdsa_p256_verify_per_s"] = openssl_speed.rate(lambda: key.public_key().verify(
        sig, data, ec.ECDSA(hashes.SHA256())), 1.0)
    rkey = rsa.generate_private_key(65537, 2048)
    rsig = rkey.sign(data, padding.PKCS1v15(), hashes.SHA256())
    out["cryptography_rsa2048_verify_per_s"] = openssl_speed.rate(lambda: rkey.public_key().verify(
        rsig, data, padding.PKCS1v15(), hashes.SHA256()), 1.0)

    ours, theirs = [], []
    for _ in range(5):
        t = time.perf_counter()
        rsa.generate_private_key(65537, 3072)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072",
                        "-out", os.devnull], check=True, capture_output=True)
        theirs.append(time.perf_counter() - t)
    out["rsa3072_keygen_s"] = {"trustplane": summary(ours), "openssl": summary(theirs)}
    return out


# -- RPM fingerprints against sha256sum ------------------------------------------

def fingerprints(tmp: Path, files: int = 2000, total_mb: int = 200, rounds: int = 5) -> dict:
    """Run-time fingerprint of one package's files against coreutils sha256sum over the same
    files, both with a warm page cache, interleaved."""
    sys.path.insert(0, str(ROOT))
    from backends.engine.software import fingerprint

    root = tmp / "fp"
    size = total_mb * 1024 * 1024 // files
    paths = []
    for i in range(files):
        rel = f"/opt/pkg/d{i % 20:02d}/f{i:05d}.bin"
        f = root / rel.lstrip("/")
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(os.urandom(size))
        paths.append(rel)
    real = [str(root / p.lstrip("/")) for p in paths]
    dirs = ["/opt/pkg"]
    runs = {"trustplane": [], "trustplane_1_thread": [], "sha256sum": []}
    subprocess.run(["sha256sum", *real], check=True, capture_output=True)  # warm the cache
    for _ in range(rounds):
        t = time.perf_counter()
        fingerprint.run_time(root, paths, dirs)
        runs["trustplane"].append(time.perf_counter() - t)
        t = time.perf_counter()
        fingerprint.run_time(root, paths, dirs, workers=1)
        runs["trustplane_1_thread"].append(time.perf_counter() - t)
        t = time.perf_counter()
        subprocess.run(["sha256sum", *real], check=True, capture_output=True)
        runs["sha256sum"].append(time.perf_counter() - t)
    shutil.rmtree(root)
    return {"files": files, "bytes": size * files, **{k: summary(v) for k, v in runs.items()}}


# -- report ----------------------------------------------------------------------

def rows(res: dict) -> list[tuple[str, float, float | None, str]]:
    tp, ref = res["trustplane"], res.get("netconfd")

    def both(get, unit):
        return get(tp), (get(ref) if ref else None), unit

    out = [("session setup median", *both(lambda r: r["session_setup"]["median"] * 1e3, "ms")),
           ("small get-config median", *both(lambda r: r["small_get"]["median"] * 1e3, "ms")),
           ("small get-config server CPU/RPC", *both(lambda r: r["small_get"]["server_cpu_per_rpc"] * 1e3, "ms"))]
    for k in tp["bulk"]:
        out.append((f"edit+commit {k} entries", *both(lambda r: r["bulk"][k]["edit_commit"]["median"] * 1e3, "ms")))
        out.append((f"get-config {k} entries", *both(lambda r: r["bulk"][k]["get_config"]["median"] * 1e3, "ms")))
        out.append((f"get-config {k} reply size", *both(lambda r: r["bulk"][k]["reply_bytes"] / 1024, "KiB")))
    for n in tp["concurrency"]:
        out.append((f"{n} sessions aggregate",
                    *both(lambda r: r["concurrency"][n]["rpc_per_s"]["median"], "RPC/s")))
        out.append((f"{n} sessions server CPU/RPC",
                    *both(lambda r: r["concurrency"][n]["server_cpu_per_rpc"] * 1e3, "ms")))
    out.append(("idle memory (PSS)", *both(lambda r: r["memory"]["idle_kb"] / 1024, "MiB")))
    out.append(("memory per idle session", *both(lambda r: r["memory"]["per_session_kb"], "KiB")))
    return out


def report(res: dict) -> str:
    lines = [f"{'figure':40} {'trustplane':>12} {'netconfd':>12} {'ratio':>7}  unit"]
    for name, a, b, unit in rows(res):
        ratio = f"{a / b:7.2f}" if b else "      -"
        bs = f"{b:12.2f}" if b is not None else f"{'-':>12}"
        lines.append(f"{name:40} {a:12.2f} {bs} {ratio}  {unit}")
    c = res["crypto"]
    lines += [
        "",
        f"ECDSA P-256 verify/s: trustplane {c['cryptography_ecdsa_p256_verify_per_s']:.0f}, "
        f"openssl {c['openssl_ecdsa_p256_verify_per_s']:.0f} "
        f"({c['cryptography_ecdsa_p256_verify_per_s'] / c['openssl_ecdsa_p256_verify_per_s']:.2f}x)",
        f"RSA-2048 verify/s:    trustplane {c['cryptography_rsa2048_verify_per_s']:.0f}, "
        f"openssl {c['openssl_rsa2048_verify_per_s']:.0f} "
        f"({c['cryptography_rsa2048_verify_per_s'] / c['openssl_rsa2048_verify_per_s']:.2f}x)",
        f"RSA-3072 keygen median: trustplane {c['rsa3072_keygen_s']['trustplane']['median']:.3f} s, "
        f"openssl genpkey {c['rsa3072_keygen_s']['openssl']['median']:.3f} s",
    ]
    return "\n".join(lines)


def fingerprint_report(fp: dict) -> str:
    ref = fp["sha256sum"]["median"]
    return (f"RPM fingerprint of {fp['files']} files, {fp['bytes'] / 2**20:.0f} MiB (median): "
            f"trustplane {fp['trustplane']['median']:.3f} s ({fp['trustplane']['median'] / ref:.2f}x), "
            f"one thread {fp['trustplane_1_thread']['median']:.3f} s "
            f"({fp['trustplane_1_thread']['median'] / ref:.2f}x), sha256sum {ref:.3f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and no 10,000-entry runs")
    parser.add_argument("--no-reference", action="store_true", help="trustplane only")
    parser.add_argument("--fingerprint-only", action="store_true", help="only the RPM fingerprint workload")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    args = parser.parse_args()
    if args.fingerprint_only:
        with tempfile.TemporaryDirectory(prefix="tp-bench-") as tmpname:
            print(fingerprint_report(fingerprints(Path(tmpname))))
        return 0
    if not args.no_reference and (os.geteuid() != 0 or not shutil.which("netconfd") and
                                  not Path("/usr/sbin/netconfd").exists()):
        print("bench: the reference server needs root and Debian's netconfd; use --no-reference", file=sys.stderr)
        return 2
    res: dict = {"machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                             "kernel": platform.release(), "note": "shared, noisy host"},
                 "client": "bench/client.py: asyncssh, base:1.1, no polling sleeps"}
    with tempfile.TemporaryDirectory(prefix="tp-bench-") as tmpname, ExitStack() as stack:
        tmp = Path(tmpname)
        servers = [Trustplane(tmp, stack)] + ([] if args.no_reference else [Netconfd(tmp, stack)])
        res.update(asyncio.run(run_all(servers, args.quick)))
    print("bench: crypto ...", file=sys.stderr, flush=True)
    res["crypto"] = crypto()
    print("bench: RPM fingerprints ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="tp-bench-") as tmpname:
        res["fingerprint"] = fingerprints(Path(tmpname))
    print("bench: ownership ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="tp-bench-") as tmpname:
        res["ownership"] = ownership.run(Path(tmpname))
    print("bench: PKI ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="tp-bench-") as tmpname:
        res["pki"] = pki.run(Path(tmpname))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2) + "\n")
    print(report(res))
    print(fingerprint_report(res["fingerprint"]))
    print(ownership.report(res["ownership"]))
    print(pki.report(res["pki"]))
    print(f"\nresults: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
