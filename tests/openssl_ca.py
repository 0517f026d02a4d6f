"""A tiny `openssl ca` setup for tests: one database directory per signing certificate.

Certificates carry fixed dates (-startdate/-enddate), so tests that pin the time never
depend on today's date.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

START, END = "20200101000000Z", "20400101000000Z"
CA_EXT = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"

KEY_ARGS = {
    "rsa2048": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    "rsa1024": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
    "p256": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    "p384": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
    "ed25519": ["-algorithm", "ED25519"],
}

CA_CNF = """\
[ ca ]
default_ca = CA_default
[ CA_default ]
dir = $ENV::CADIR
database = $dir/index.txt
new_certs_dir = $dir/new
serial = $dir/serial
crlnumber = $dir/crlnumber
default_md = default
policy = policy_any
unique_subject = no
copy_extensions = none
default_days = 365
default_crl_days = 30
[ policy_any ]
commonName = supplied
[ req ]
distinguished_name = req_dn
[ req_dn ]
"""


@dataclass
class Issued:
    name: str
    cert: x509.Certificate
    pem: Path
    key: Path
    cadir: Path  # this certificate's own `openssl ca` database, for what it signs


class OpensslCa:
    def __init__(self, base: Path):
        self.base = base
        self.cnf = base / "ca.cnf"
        self.cnf.write_text(CA_CNF)

    def run(self, *args: str, cadir: Path | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, "CADIR": str(cadir or self.base)}
        p = subprocess.run(["openssl", *args], cwd=self.base, env=env, capture_output=True, text=True)
        assert p.returncode == 0, f"openssl {' '.join(args)}\n{p.stdout}\n{p.stderr}"
        return p

    def key(self, name: str, alg: str) -> Path:
        path = self.base / f"{name}.key"
        self.run("genpkey", *KEY_ARGS[alg], "-out", str(path))
        return path

    def issue(self, name: str, cn: str, issuer: Issued | None = None, *, alg: str = "p256",
              key: Path | None = None, ext: str = CA_EXT, aki: bool = True, ski: str = "hash",
              start: str = START, end: str = END, md: str | None = None, sigopts: tuple[str, ...] = (),
              serial: int | None = None, cdp: str | None = None) -> Issued:
        """A certificate signed by issuer (self-signed without one); a random serial unless given."""
        key = key or self.key(name, alg)
        csr, pem, extfile = (self.base / f"{name}.{x}" for x in ("csr", "pem", "ext"))
        lines = ext + (f"subjectKeyIdentifier={ski}\n" if ski else "")
        if issuer is not None and aki:
            lines += "authorityKeyIdentifier=keyid\n"
        if cdp is not None:
            lines += f"crlDistributionPoints=URI:{cdp}\n"
        extfile.write_text(lines)
        cadir = self.base / f"db-{name}"
        (cadir / "new").mkdir(parents=True)
        (cadir / "index.txt").touch()
        (cadir / "serial").write_text("01\n")
        (cadir / "crlnumber").write_text("01\n")
        self.run("req", "-new", "-key", str(key), "-subj", f"/CN={cn}", "-config", str(self.cnf), "-out", str(csr))
        args = ["ca", "-batch", "-config", str(self.cnf), "-in", str(csr), "-out", str(pem), "-notext",
                "-startdate", start, "-enddate", end, "-extfile", str(extfile)]
        if serial is None:
            args.append("-rand_serial")
        else:
            ((cadir if issuer is None else issuer.cadir) / "serial").write_text(f"{serial:04X}\n")
        if md:
            args += ["-md", md]
        for opt in sigopts:
            args += ["-sigopt", opt]
        if issuer is None:
            self.run(*args, "-selfsign", "-keyfile", str(key), cadir=cadir)
        else:
            self.run(*args, "-cert", str(issuer.pem), "-keyfile", str(issuer.key), cadir=issuer.cadir)
        return Issued(name, x509.load_pem_x509_certificate(pem.read_bytes()), pem, key, cadir)

    def revoke(self, issuer: Issued, cert: Issued, *, date: str | None = None) -> None:
        """date, in index.txt form (YYMMDDHHMMSSZ), replaces the current time openssl records."""
        self.run("ca", "-config", str(self.cnf), "-revoke", str(cert.pem), "-cert", str(issuer.pem),
                 "-keyfile", str(issuer.key), cadir=issuer.cadir)
        if date is None:
            return
        index = issuer.cadir / "index.txt"
        lines = []
        for line in index.read_text().splitlines():
            f = line.split("\t")
            if f[0] == "R" and int(f[3], 16) == cert.cert.serial_number:
                f[2] = date
            lines.append("\t".join(f))
        index.write_text("\n".join(lines) + "\n")

    def crl_pem(self, issuer: Issued, name: str, last: str, nxt: str) -> bytes:
        out = self.base / f"{name}.crl.pem"
        self.run("ca", "-config", str(self.cnf), "-gencrl", "-cert", str(issuer.pem), "-keyfile", str(issuer.key),
                 "-crl_lastupdate", last, "-crl_nextupdate", nxt, "-out", str(out), cadir=issuer.cadir)
        return out.read_bytes()


def lazily_broken(cert: x509.Certificate, how: str) -> x509.Certificate:
    """cert with a name ("name") or extensions ("extension") that load but fail when read:
    a commonName whose value is a [9] element, or an extension twice. Its signature no longer holds."""
    a = asn1_x509.Certificate.load(cert.public_bytes(Encoding.DER))
    tbs = a["tbs_certificate"]
    if how == "name":
        tbs["subject"] = asn1_x509.Name.load(b"\x30\x0b\x31\x09\x30\x07\x06\x03\x55\x04\x03\xa9\x00")
    else:
        exts = list(tbs["extensions"])
        tbs["extensions"] = asn1_x509.Extensions([*exts, exts[0]])
    return x509.load_der_x509_certificate(a.dump())

