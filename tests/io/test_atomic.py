"""Atomic writes and staged outputs: a failure never leaves a half-written output."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from udcguard.errors import ImageError
from udcguard.io import atomic
from udcguard.io.atomic import (
    save_json,
    save_npy,
    sha256_file,
    staged_output,
    staging_dir,
    write_bytes,
)


def test_write_returns_sha_and_leaves_no_temp(tmp_path) -> None:
    digest = write_bytes(tmp_path / "a" / "f.bin", b"hello")
    assert digest == hashlib.sha256(b"hello").hexdigest() == sha256_file(tmp_path / "a" / "f.bin")
    assert os.listdir(tmp_path / "a") == ["f.bin"]


def test_failed_rename_keeps_old_content(tmp_path, monkeypatch) -> None:
    target = tmp_path / "f.npy"
    save_npy(target, np.arange(3))
    monkeypatch.setattr(atomic.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        save_npy(target, np.arange(5))
    monkeypatch.undo()
    assert np.load(target).tolist() == [0, 1, 2]
    assert os.listdir(tmp_path) == ["f.npy"]


def test_npy_and_json_are_byte_stable(tmp_path) -> None:
    a = save_npy(tmp_path / "1.npy", np.linspace(0, 1, 7, dtype=np.float32))
    b = save_npy(tmp_path / "2.npy", np.linspace(0, 1, 7, dtype=np.float32))
    assert a == b
    assert save_json(tmp_path / "1.json", {"b": 1, "a": np.float32(2)}) == save_json(tmp_path / "2.json", {"a": 2.0, "b": 1})


def test_staged_output_success_and_failures(tmp_path) -> None:
    final = tmp_path / "out"
    with staged_output(final, "fp1") as stage:
        (stage / "x.txt").write_text("1")
    assert (final / "x.txt").read_text() == "1" and not staging_dir(final).exists()
    assert not (final / ".fingerprint").exists()

    # a crash (not bad input) keeps the staging dir for resuming; the old output survives
    with pytest.raises(RuntimeError), staged_output(final, "fp2") as stage:
        (stage / "y.txt").write_text("partial")
        raise RuntimeError("killed")
    assert (final / "x.txt").read_text() == "1" and (staging_dir(final) / "y.txt").exists()

    # same fingerprint: resume sees the partial work; other fingerprint: wiped
    with staged_output(final, "fp2") as stage:
        assert (stage / "y.txt").exists()
        raise_bad = False
    assert (final / "y.txt").exists() and not (final / "x.txt").exists()
    staging_dir(final).mkdir()
    (staging_dir(final) / "stale").write_text("")
    with pytest.raises(ImageError), staged_output(final, "fp3") as stage:
        assert not (stage / "stale").exists()
        raise ImageError("bad.png: corrupt")
    assert not staging_dir(final).exists() and (final / "y.txt").exists() and not raise_bad
