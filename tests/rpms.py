"""Real RPM packages for the tests, built with Debian's rpmbuild and signed with gpg, and payloads altered
to ask their decoder for more memory than it may use."""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path


@dataclass
class GpgKey:
    home: Path
    uid: str
    key_id: str  # 16 hex digits, lowercase


def make_gpg_key(home: Path, uid: str = "Package Signer <packages@example.net>", algo: str = "rsa2048") -> GpgKey:
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    env = dict(os.environ, GNUPGHOME=str(home))
    subprocess.run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key", uid, algo, "sign", "never"],
                   env=env, check=True, capture_output=True)
    out = subprocess.run(["gpg", "--batch", "--with-colons", "--list-keys", uid], env=env, check=True,
                         capture_output=True, text=True).stdout
    key_id = next(line.split(":")[4] for line in out.splitlines() if line.startswith("pub:"))
    return GpgKey(home, uid, key_id.lower())


def export_public(key: GpgKey) -> bytes:
    return subprocess.run(["gpg", "--batch", "--armor", "--export", key.uid], check=True, capture_output=True,
                          env=dict(os.environ, GNUPGHOME=str(key.home))).stdout


def build_rpm(work: Path, name: str, files: dict[str, bytes], *, version: str = "1.0.0", release: str = "r1",
              dirs: tuple[str, ...] = (), modes: dict[str, int] | None = None,
              symlinks: dict[str, str] | None = None, payload: str = "w9.gzdio",
              key: GpgKey | None = None) -> Path:
    """A binary noarch RPM installing `files` (absolute path -> content), owning `dirs`."""
    top = work / f"build-{name}-{version}-{release}"
    src = top / "SOURCE-TREE"
    shutil.rmtree(top, ignore_errors=True)
    src.mkdir(parents=True)
    for path, data in files.items():
        f = src / path.lstrip("/")
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data)
        os.chmod(f, (modes or {}).get(path, 0o644))
    for d in dirs:
        (src / d.lstrip("/")).mkdir(parents=True, exist_ok=True)
        if d in (modes or {}):
            os.chmod(src / d.lstrip("/"), modes[d])
    for path, target in (symlinks or {}).items():
        (src / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, src / path.lstrip("/"))
    listed = [f"%dir {d}" for d in dirs] + list(files) + list(symlinks or {})
    spec = top / f"{name}.spec"
    spec.write_text(
        f"Name: {name}\nVersion: {version}\nRelease: {release}\nSummary: {name} test package\n"
        f"License: MIT\nBuildArch: noarch\n%description\n{name} test package\n"
        f"%install\ncp -a {src}/. %{{buildroot}}/\n"
        f"%files\n%defattr(-,root,root,-)\n" + "\n".join(listed) + "\n")
    subprocess.run(["rpmbuild", "-bb", "--nodeps", "--define", f"_topdir {top}",
                    "--define", f"_binary_payload {payload}", "--define", "__os_install_post %{nil}",
                    "--define", "debug_package %{nil}", "--define", "_build_id_links none", str(spec)],
                   check=True, capture_output=True)
    rpm = top / "RPMS" / "noarch" / f"{name}-{version}-{release}.noarch.rpm"
    if key is not None:
        subprocess.run(["rpmsign", "--define", f"_gpg_name {key.uid}", "--define", "__gpg /usr/bin/gpg",
                        "--addsign", str(rpm)], env=dict(os.environ, GNUPGHOME=str(key.home)),
                       check=True, capture_output=True, stdin=subprocess.DEVNULL)
    out = work / rpm.name
    shutil.copyfile(rpm, out)
    return out


def xz_claiming_a_big_dictionary(data: bytearray, at: int) -> None:
    """The xz stream at data[at:] says it needs a 1.5 GiB dictionary (its block header CRC fixed up)."""
    hdr = at + 12  # after the stream header
    assert data[hdr + 1:hdr + 4] == b"\x00\x21\x01"  # no sizes, one LZMA2 filter with one property byte
    data[hdr + 4] = 37
    size = (data[hdr] + 1) * 4
    data[hdr + size - 4:hdr + size] = struct.pack("<I", zlib.crc32(bytes(data[hdr:hdr + size - 4])))


def zstd_claiming_a_big_window(data: bytearray, at: int) -> None:
    """The zstd frame at data[at:] says it needs a 2 GiB window."""
    assert data[at + 4] & 0x20 == 0  # not single-segment: a window descriptor follows
    data[at + 5] = 21 << 3


FINGERPRINT_SH = r"""
# recompute a fingerprint with coreutils: cd to the install root, pass the package's paths
for p in "$@"; do
  f=".$p"
  if [ -L "$f" ]; then d=$(readlink "$f" | tr -d '\n' | sha256sum | cut -c1-64)
  elif [ -f "$f" ]; then d=$(sha256sum < "$f" | cut -c1-64)
  else d=$(printf '' | sha256sum | cut -c1-64); fi
  printf '%s %06o %s\n' "$d" "0x$(stat -c %f "$f")" "$p"
done | LC_ALL=C sort -k3 | sha256sum | cut -c1-64
"""


def shell_fingerprint(root: Path, paths: list[str]) -> str:
    """The README's shell recipe, run as written."""
    return subprocess.run(["sh", "-c", FINGERPRINT_SH, "fingerprint", *paths], cwd=root, check=True,
                          capture_output=True, text=True).stdout.strip()
