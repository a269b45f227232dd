"""The outcome table of docs/design.md, row by row."""

from __future__ import annotations

import signal

from supervisor.outcome import Action, CodexEnd, decide


def test_exit0_with_artifacts_completes_and_posts() -> None:
    d = decide(CodexEnd(0), has_artifacts=True, resumed=False, thread_id_known=True)
    assert (d.action, d.post_artifacts, d.warning) == (Action.COMPLETE, True, None)


def test_exit0_without_artifacts_resumes_once_when_thread_known() -> None:
    d = decide(CodexEnd(0), has_artifacts=False, resumed=False, thread_id_known=True)
    assert d.action is Action.RESUME


def test_exit0_without_artifacts_after_resume_completes_with_warning() -> None:
    d = decide(CodexEnd(0), has_artifacts=False, resumed=True, thread_id_known=True, resume_returncode=0)
    assert d.action is Action.COMPLETE and "no artifacts" in (d.warning or "")


def test_exit0_without_artifacts_and_no_thread_id_completes_with_warning() -> None:
    d = decide(CodexEnd(0), has_artifacts=False, resumed=False, thread_id_known=False)
    assert d.action is Action.COMPLETE and "thread id" in (d.warning or "")


def test_resume_failed_completes_with_warning_naming_exit_code() -> None:
    d = decide(CodexEnd(0), has_artifacts=False, resumed=True, thread_id_known=True, resume_returncode=3)
    assert d.action is Action.COMPLETE and "exit code 3" in (d.warning or "")


def test_resume_wrote_artifacts_completes() -> None:
    d = decide(CodexEnd(0), has_artifacts=True, resumed=True, thread_id_known=True, resume_returncode=0)
    assert (d.action, d.post_artifacts) == (Action.COMPLETE, True)


def test_nonzero_exit_is_error_with_code_and_stderr_tail() -> None:
    d = decide(CodexEnd(2), has_artifacts=True, resumed=False, thread_id_known=True, stderr_tail="boom")
    assert d.action is Action.ERROR and d.post_artifacts
    assert d.reason.startswith("codex exit code 2") and "boom" in d.reason


def test_killed_by_signal_names_the_signal() -> None:
    d = decide(CodexEnd(-signal.SIGKILL), has_artifacts=False, resumed=False, thread_id_known=True)
    assert d.action is Action.ERROR and "SIGKILL" in d.reason
    # The supervisor turns it into a cancel when it was interrupted too (scancel).
    assert d.codex_signalled
    assert not decide(CodexEnd(2), has_artifacts=False, resumed=False, thread_id_known=True).codex_signalled


def test_timeout_is_error_naming_the_limit() -> None:
    d = decide(CodexEnd(-15, timed_out_after=90), has_artifacts=True, resumed=False, thread_id_known=True)
    assert d.action is Action.ERROR and d.post_artifacts and d.reason == "codex timed out after 90 s"


def test_cancelled_is_error_naming_the_signal() -> None:
    d = decide(CodexEnd(143, cancelled_by="SIGTERM"), has_artifacts=True, resumed=False, thread_id_known=True)
    assert d.action is Action.ERROR and d.reason == "cancelled (SIGTERM)"
