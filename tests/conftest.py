"""Shared fixtures: a real local backend, the fake codex on PATH, and a way to
run the real `flywheel-bootstrap` command as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.backend_fixture import backend  # noqa: F401  (re-exported fixture)
from tests.pool_host import host  # noqa: F401  (re-exported fixture)

ROOT = Path(__file__).resolve().parent.parent
FAKE_CODEX = ROOT / "tests" / "fake_codex"

# Small timings so fault tests finish in seconds; see workers.common.timing.Timing.
FAST_TIMING = {
    "FLYWHEEL_TIMING_KILL_GRACE": "3",
    "FLYWHEEL_TIMING_FLUSH_TIMEOUT": "5",
    "FLYWHEEL_TIMING_LIVENESS_TIMEOUT": "4",
    "FLYWHEEL_TIMING_BACKOFF_BASE": "0.05",
    "FLYWHEEL_TIMING_BACKOFF_CAP": "0.5",
    "FLYWHEEL_TIMING_READ_TIMEOUT": "5",
    "FLYWHEEL_TIMING_CONNECT_TIMEOUT": "2",
}


@dataclass
class Env:
    """Everything one test run of the real command needs."""

    tmp: Path
    home: Path
    bin: Path
    vars: dict[str, str]

    def config(self, body: str | None = None, name: str = "config.toml") -> Path:
        path = self.tmp / name
        path.write_text(body if body is not None else (
            f'workspace_dir = "{self.tmp}/ws/<run_id>"\n'
            '[flywheel]\nworkspace_instructions = "Work in the workspace."\n'
        ))
        return path

    def workspace(self, run_id: str) -> Path:
        return self.tmp / "ws" / run_id

    def state(self, run_id: str) -> Path:
        return self.home / "state" / run_id

    def run(self, *args: str, extra: dict[str, str] | None = None, timeout: float = 90,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "supervisor", *args],
            env={**self.vars, **(extra or {})}, capture_output=True, text=True, timeout=timeout,
            input=stdin, cwd=self.tmp,
        )

    def start(self, *args: str, extra: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "supervisor", *args], env={**self.vars, **(extra or {})},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=self.tmp,
        )


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    home = tmp_path / "home"
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "codex").symlink_to(FAKE_CODEX)
    variables = {k: v for k, v in os.environ.items()
                 if not k.startswith(("FLYWHEEL_", "BOOTSTRAP_", "FAKE_CODEX", "CODEX_"))}
    variables.update(FAST_TIMING)
    variables.update(
        PATH=f"{fake_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        FLYWHEEL_HOME=str(home),
        FLYWHEEL_HEARTBEAT_INTERVAL="0.5",
        HOME=str(tmp_path / "userhome"),
        PYTHONPATH=str(ROOT),
    )
    yield Env(tmp_path, home, fake_bin, variables)
