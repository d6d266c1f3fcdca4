"""Outputs are written atomically and with the modes the user's umask gives, not the 0600/0700 of temporary files."""

from __future__ import annotations

import os
import stat

import pytest

from unstar_trl.io import atomic_directory, write_bytes_atomic, write_json


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_follow_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        write_json(tmp_path / "results.json", {"a": 1})
        write_bytes_atomic(tmp_path / "plot.png", b"\x89PNG")
        with atomic_directory(tmp_path / "out", "test") as staging:
            (staging / "inside.txt").write_text("x")
    finally:
        os.umask(previous)
    for name, full in (("results.json", 0o666), ("plot.png", 0o666), ("out", 0o777)):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == full & ~umask, name
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out", "plot.png", "results.json"]  # no temp files
