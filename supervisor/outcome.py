"""What to do after Codex exits: the table of docs/design.md (The run, step by step) as one pure function."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from supervisor.signals import signal_name


class Action(str, Enum):
    RESUME = "resume"
    COMPLETE = "complete"
    ERROR = "error"


@dataclass(frozen=True)
class CodexEnd:
    """How a Codex process ended. `returncode` is Popen's: negative means a signal."""

    returncode: int
    timed_out_after: float | None = None
    cancelled_by: str | None = None  # "SIGTERM" / "SIGINT" when bootstrap was interrupted


@dataclass(frozen=True)
class Decision:
    action: Action
    post_artifacts: bool
    reason: str = ""
    warning: str | None = None
    # Codex was killed by a signal bootstrap did not send. When bootstrap is
    # interrupted too, the same hand signalled both (scancel and systemctl stop
    # signal every process of the job at once): the run was cancelled.
    codex_signalled: bool = False


def decide(
    end: CodexEnd,
    *,
    has_artifacts: bool,
    resumed: bool,
    thread_id_known: bool,
    resume_returncode: int | None = None,
    stderr_tail: str = "",
) -> Decision:
    """The row of the outcome table that applies. `end` is the first Codex run's
    end; `resume_returncode` is the resume's, once one ran."""
    if end.cancelled_by:
        return Decision(Action.ERROR, True, f"cancelled ({end.cancelled_by})")
    if end.timed_out_after is not None:
        return Decision(Action.ERROR, True, f"codex timed out after {end.timed_out_after:g} s")
    if end.returncode < 0:
        return Decision(Action.ERROR, True, f"codex killed by signal {signal_name(-end.returncode)}",
                        codex_signalled=True)
    if end.returncode != 0:
        reason = f"codex exit code {end.returncode}"
        if stderr_tail.strip():
            reason += f"\n{stderr_tail}"
        return Decision(Action.ERROR, True, reason)
    if has_artifacts:
        return Decision(Action.COMPLETE, True)
    if not resumed and thread_id_known:
        return Decision(Action.RESUME, False)
    if resumed and resume_returncode not in (None, 0):
        return Decision(
            Action.COMPLETE,
            False,
            warning=f"codex resume (asked to write the artifact manifest) failed with exit code "
            f"{resume_returncode}; completing without artifacts",
        )
    why = "no thread id was seen, so it could not be resumed" if not thread_id_known else "even after one resume"
    return Decision(Action.COMPLETE, False, warning=f"codex wrote no artifacts ({why})")
