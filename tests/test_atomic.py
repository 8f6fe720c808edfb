"""atomic_write: old or new content, never half; normal permissions; one-line OS errors."""

import os
import stat

import pytest

from sparsetrain.atomic import atomic_write
from sparsetrain.errors import UserOSError


def test_replaces_content_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    atomic_write(target, "one")
    atomic_write(target, b"two")
    atomic_write(target, lambda f: f.write(b"three"))
    assert target.read_text() == "three"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]


def test_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # readable by teammates, unlike mkstemp's 0o600


def test_failure_while_writing_keeps_the_old_file(tmp_path):
    target = tmp_path / "c.txt"
    target.write_text("old")

    def broken(f):
        f.write(b"half")
        raise RuntimeError("producer failed")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["c.txt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory_is_a_one_line_error(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(UserOSError, match=r"cannot write .*d\.txt.*Permission denied"):
            atomic_write(tmp_path / "d.txt", "x")
    finally:
        tmp_path.chmod(0o700)


def test_parent_that_is_a_file_is_a_one_line_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(UserOSError, match=r"cannot write .*file'"):
        atomic_write(tmp_path / "file" / "e.txt", "x")
