"""The `backend` pytest fixture: a started LocalBackend on a free port in tmp_path.

Import it into a conftest (or a test module) to use it:
    from backend_fixture import backend  # noqa: F401
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.local_backend import LocalBackend


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[LocalBackend]:
    """A running local backend (127.0.0.1, free port), stopped and closed after the test."""
    with LocalBackend(tmp_path / "backend.sqlite3") as started:
        yield started
    assert not started.errors, "the local backend hit internal errors:\n" + "\n".join(
        started.errors
    )
