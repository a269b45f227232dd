"""One Codex invocation's process (supervisor/codex_process.py): how it ended
is known before it is reaped, so its group id cannot be reused under us."""

from __future__ import annotations

import os
import select
from pathlib import Path

import pytest

from supervisor.codex_process import CodexProcess
from workers import run_processes as rp


@pytest.mark.parametrize("script,code", [("exit 3", 3), ("kill -TERM $$", -15), ("exit 0", 0)])
def test_returncode_is_known_while_codex_is_still_unreaped(tmp_path: Path, script: str, code: int) -> None:
    procs = rp.open_run("codex-process-test", {rp.ENGINE_VAR: "marker"})
    proc = CodexProcess(["sh", "-c", script], procs=procs, cwd=tmp_path, env=dict(os.environ), stdin=None,
                        stdout=tmp_path / "out", stderr=tmp_path / "err")
    try:
        ready, _, _ = select.select(proc.waitables(), [], [], 30)
        assert ready, "codex did not end within 30 s"
        assert proc.returncode == code
        # A zombie still holds its pid, and with it the group id bootstrap signals.
        assert Path(f"/proc/{proc.pgid}").exists()
        assert proc.returncode == code  # asking again reaps nothing either
        assert proc.popen.wait() == code
        assert not Path(f"/proc/{proc.pgid}").exists()
    finally:
        proc.close()
        procs.end(None, timeout=1.0)
