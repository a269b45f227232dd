"""Small pure helpers of the run flow."""

from __future__ import annotations

import json
from pathlib import Path

from supervisor.codex_output import find_thread_id, last_agent_message
from supervisor.codex_process import exec_argv, resume_argv


def write_lines(path: Path, *events: object) -> None:
    path.write_bytes(b"".join((e if isinstance(e, bytes) else json.dumps(e).encode()) + b"\n" for e in events))


def test_find_thread_id_from_the_offset_of_this_launch(tmp_path: Path) -> None:
    out = tmp_path / "codex.out"
    write_lines(out, {"type": "thread.started", "thread_id": "old"}, b"not json",
                {"type": "thread.started", "thread_id": "new"})
    assert find_thread_id(out, 0) == "old"
    second = len(out.read_bytes().split(b"\n", 1)[0]) + 1
    assert find_thread_id(out, second) == "new"
    assert find_thread_id(tmp_path / "missing", 0) is None


def test_events_after_a_line_longer_than_a_read_step_are_found(tmp_path: Path) -> None:
    from supervisor.codex_output import READ_STEP, last_failure

    out = tmp_path / "codex.out"
    write_lines(out, b"x" * (3 * READ_STEP), {"type": "thread.started", "thread_id": "t"},
                {"type": "turn.failed", "error": {"message": "after the long line"}})
    assert find_thread_id(out, 0) == "t"
    assert last_failure(out, 0) == "after the long line"


def test_last_agent_message_is_the_last_one_cleaned_and_cut(tmp_path: Path) -> None:
    out = tmp_path / "codex.out"
    msg = {"type": "item.completed", "item": {"type": "agent_message", "text": "first"}}
    last = {"type": "item.completed", "item": {"type": "agent_message", "text": "done\n\n" + "x" * 1000}}
    write_lines(out, msg, last, {"type": "turn.completed"})
    said = last_agent_message(out)
    assert said is not None and said.startswith("done x") and len(said) == 500
    assert last_agent_message(tmp_path / "missing") is None


def test_resume_puts_exec_flags_before_resume() -> None:
    ws = Path("/w")
    assert exec_argv(["codex"], ws, ["--sandbox", "workspace-write"]) == [
        "codex", "exec", "--json", "--cd", "/w", "--skip-git-repo-check", "--sandbox", "workspace-write", "-"]
    argv = resume_argv(["codex"], ws, ["--sandbox", "workspace-write"], "tid", "fix it")
    assert argv[argv.index("resume"):] == ["resume", "tid", "fix it"]
    assert argv.index("--cd") < argv.index("resume") and argv.index("--sandbox") < argv.index("resume")


def test_last_failure_prefers_turn_failed_and_drops_harmless_stderr(tmp_path: Path) -> None:
    from supervisor.codex_output import failure_detail, last_failure

    out = tmp_path / "codex.out"
    write_lines(out, {"type": "error", "message": "Reconnecting... 1/5"},
                {"type": "error", "message": "unexpected status 500"},
                {"type": "turn.failed", "error": {"message": "unexpected status 500"}})
    assert last_failure(out, 0) == "unexpected status 500"
    write_lines(out, {"type": "error", "message": "only an error"})
    assert last_failure(out, 0) == "only an error"
    write_lines(out, {"type": "turn.completed"})
    assert last_failure(out, 0) is None
    stderr = 'WARNING: proceeding, even though we could not create PATH aliases: x\nreal problem'
    assert failure_detail(stderr, "boom") == "boom\nreal problem"
    assert failure_detail("", None) == ""
