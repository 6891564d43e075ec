"""runner/identity.py: the identity file on disk is whole or absent, 0600, and a damaged one is a
clear error (an enrollment token is spent once: a torn file would strand the runner)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from outpost.runner.identity import IDENTITY_FILE, EnrollmentError, RunnerIdentity, load_identity
from outpost.sdk.identity import IdentityKey


def _identity(n: int) -> RunnerIdentity:
    return RunnerIdentity(f"run_{n}", IdentityKey.generate(), "https://cp.example", ("pin",))


def test_a_reader_never_sees_a_torn_file_while_it_is_rewritten(tmp_path: Path) -> None:
    _identity(0).save(tmp_path)
    done, seen, errors = threading.Event(), set(), []

    def read() -> None:
        while not done.is_set():
            try:
                loaded = load_identity(tmp_path)
            except Exception as exc:  # noqa: BLE001 - a torn file, whatever it raises
                errors.append(exc)
                return
            assert loaded is not None
            seen.add(loaded.runner_id)

    reader = threading.Thread(target=read)
    reader.start()
    for n in range(1, 300):
        _identity(n).save(tmp_path)
    done.set()
    reader.join()
    assert not errors, errors[0]
    assert seen  # the reader did read
    assert (tmp_path / IDENTITY_FILE).stat().st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path) == [IDENTITY_FILE]  # no temporary file left behind


@pytest.mark.parametrize("text", ["", "{", "[]", '{"runner_id": "r"}', '{"runner_id": 1, "x": 2}'])
def test_a_damaged_identity_file_is_a_clear_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / IDENTITY_FILE
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(EnrollmentError, match="is not a runner identity"):
        load_identity(tmp_path)
