"""The device filesystem resolver: accepted forms, and every way out refused."""
import os

import pytest

from nc_server.devfs import DeviceFS, DevFSError


@pytest.fixture
def fs(tmp_path):
    d = DeviceFS(tmp_path / "fs")
    (tmp_path / "fs" / "disk0:" / "ovs").mkdir()
    (tmp_path / "fs" / "disk0:" / "ovs" / "v.vcj").write_bytes(b"voucher")
    (tmp_path / "secret").write_text("outside")
    return d


@pytest.mark.parametrize("path", ["/disk0:/ovs/v.vcj", "disk0:/ovs/v.vcj", "disk0:ovs/v.vcj",
                                  "disk0:/ovs//./v.vcj"])
def test_accepted_forms(fs, path):
    assert fs.read_bytes(path) == b"voucher"
    assert fs.device_path(fs.resolve(path)) == "disk0:/ovs/v.vcj"


@pytest.mark.parametrize("path,code", [
    ("disk0:/../secret", "path-escape"),
    ("/disk0:/ovs/../../harddisk:/x", "path-escape"),
    ("flash:/x", "bad-device-path"),
    ("/etc/passwd", "bad-device-path"),
    ("disk0", "bad-device-path"),
    ("disk0:/a\0b", "bad-device-path"),
    ("disk0:\\ovs\\v.vcj", "bad-device-path"),
    ("disk0:/nope", "file-not-found"),
    ("disk0:/ovs", "not-a-file"),
])
def test_refused(fs, path, code):
    with pytest.raises(DevFSError) as exc:
        fs.read_bytes(path)
    assert exc.value.code == code
    assert path.replace("\0", "\\x00")[:5] in repr(exc.value.message) or code == "bad-device-path"


def test_symlink_out_of_the_device_is_refused(fs, tmp_path):
    os.symlink(tmp_path / "secret", tmp_path / "fs" / "disk0:" / "link")
    os.symlink(tmp_path, tmp_path / "fs" / "disk0:" / "dirlink")
    for path in ("disk0:/link", "disk0:/dirlink/secret"):
        with pytest.raises(DevFSError) as exc:
            fs.read_bytes(path)
        assert exc.value.code == "path-escape"


def test_symlink_inside_the_device_is_followed(fs, tmp_path):
    os.symlink("ovs/v.vcj", tmp_path / "fs" / "disk0:" / "inner")
    assert fs.read_bytes("disk0:/inner") == b"voucher"


def test_size_limit_and_write(fs):
    fs.write_bytes("harddisk:/big.bin", b"x" * 100)
    assert fs.read_bytes("harddisk:/big.bin", max_size=100) == b"x" * 100
    with pytest.raises(DevFSError) as exc:
        fs.read_bytes("harddisk:/big.bin", max_size=99)
    assert exc.value.code == "file-too-large"
    with pytest.raises(DevFSError):
        fs.write_bytes("disk0:/ovs", b"")
