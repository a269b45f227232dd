"""The pool's event loop, after gunicorn's Arbiter: start the runs' supervisors as
GPUs and `--max-parallel` slots free up, reap those that exit, cancel them all on
SIGINT/SIGTERM, SIGKILL them on a second signal or once they overstay the
cancel grace, and report the runs whose supervisor was killed.

What to do is decided in `decisions`; what is done to a child process is in
`children`. `Pool` only holds the bookkeeping and calls the two in turn.
"""

from __future__ import annotations

import selectors
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from supervisor import run_status
from supervisor.control_ledger import read_mode
from supervisor.link_status import link_of, trouble_text
from supervisor.pool import states
from supervisor.pool import status_view as sv
from supervisor.pool.children import (
    OUTPUT_LOG,
    CannotStart,
    Child,
    end_run_processes,
    last_output_line,
    parent_death_hook,
    read_delivered,
    spawn,
    without_prefix,
)
from supervisor.pool.decisions import (
    ChildArgv,
    GpuPlan,
    GpuRequest,
    child_env,
    classify_exit,
    next_starts,
    pool_exit_status,
)
from supervisor.pool.gpus import GpuAllocator
from supervisor.pool.launched import Launcher
from supervisor.pool.report import post_error, post_note, undelivered_note
from supervisor.pool.runs_file import RunSpec
from supervisor.signals import signal_name
from workers.common.errors import EXIT_OK, EXIT_RUN_ERROR
from workers.common.spool import ShipperState
from workers.common.timing import Timing
from workers.common.wake import WakePipe
from workers.run_processes import Usage, kept_usage, live_usage

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

View = sv.LiveView | sv.PlainView
# How long the pool keeps trying to end a run's processes that SIGKILL does not
# end (a process stuck in the kernel) before it gives up on them.
LINGER_LIMIT = 60.0


@dataclass(frozen=True)
class PoolSettings:
    """How the pool runs its children; all decided before any run starts."""

    plan: GpuPlan
    # The children's environment before each run's own additions (child_env).
    base_env: Mapping[str, str]
    argv_of: ChildArgv
    timing: Timing
    max_parallel: int | None
    # How long cancelled supervisors may take before they are SIGKILLed.
    cancel_grace: float
    # The longest the loop sleeps between two looks at the runs.
    tick: float
    # Gets the summary as one JSON object instead of the table (`--json`).
    summary_out: Callable[[str], None] | None = None
    # Fork the supervisors from a launcher that imported them once (launcher.py);
    # False: exec each (FLYWHEEL_POOL_START=exec).
    fork_runs: bool = True


@dataclass
class RunSlot:
    """One run while the pool works (mutable bookkeeping, owned by the Pool)."""

    spec: RunSpec
    state_dir: Path
    state: str = states.WAITING
    why_waiting: str = ""
    proc: Child | None = None
    gpus: tuple[str, ...] | None = None
    started: float | None = None
    ended: float | None = None
    result: str = ""
    status: int = EXIT_OK
    entries: int | None = None
    post: Future[str] | None = field(default=None, repr=False)
    mode: str | None = None  # last read from the run's control.json
    # Its supervisor is gone but some process of its run still lives: its
    # GPUs are held back until none does (monotonic time it was first seen).
    lingering_since: float | None = None
    usage: Usage | None = None  # once its processes are gone
    # Wall-clock time its supervisor was started; run_status.json older than
    # this is an earlier start's.
    spawned_at: float = 0.0
    codex_started: bool = False

    @property
    def log_path(self) -> Path:
        return self.state_dir / OUTPUT_LOG

    def row(self, now: float) -> sv.RunRow:
        elapsed = None
        if self.started is not None:
            elapsed = (self.ended if self.ended is not None else now) - self.started
        entries = self.entries
        trouble = ""
        if self.state in (states.RUNNING, states.STOPPING):
            entries = read_delivered(self.state_dir)
            if entries is None:
                entries = self.entries
            self.entries = entries
            trouble = trouble_text(link_of(ShipperState.load(self.state_dir)), time.time())
        result = self.result if self.state != states.WAITING else self.why_waiting
        usage = self.usage
        if usage is None and self.state in (states.RUNNING, states.STOPPING):
            usage = live_usage(self.state_dir)
        if self.state == states.RUNNING:
            self.mode = read_mode(self.state_dir) or self.mode
        return sv.RunRow(self.spec.run_id, self._shown_state(), elapsed, entries, self.gpus, result,
                         usage.cpu_seconds if usage else None, usage.peak_bytes if usage else None, self.mode,
                         trouble)

    def _shown_state(self) -> str:
        """`starting` until this start of the run has Codex running."""
        if self.state != states.RUNNING:
            return self.state
        if not self.codex_started:
            self.codex_started = run_status.codex_started_since(run_status.read(self.state_dir), self.spawned_at)
        return states.RUNNING if self.codex_started else states.STARTING


class Feed(Protocol):
    """Runs that arrive while the pool works (`--runs DIR --watch`): the pool
    asks for new ones at every turn, says when each starts (before its
    supervisor exists) and how each ended, and keeps going, idle or not, until
    a signal."""

    def arrivals(self) -> list[tuple[RunSpec, GpuRequest]]: ...

    def started(self, spec: RunSpec) -> None: ...

    def ended(self, spec: RunSpec, state: str) -> None: ...

    def close(self) -> None:
        """Stop feeding: called when the pool ends, before its wake-up pipe closes."""


class Wakeup:
    """What wakes the loop: a self-pipe written by signal handlers (through the
    wakeup fd), SIGCHLD and finished reports. SIGINT/SIGTERM are also noted in
    `signals` for the loop to act on; a handler does nothing else."""

    def __init__(self) -> None:
        self._pipe = WakePipe()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._pipe.fileno(), selectors.EVENT_READ)
        self.signals: list[int] = []
        # Python lets only the main thread set signal handlers.
        self._in_main = threading.current_thread() is threading.main_thread()
        self._saved: dict[int, object] = {}
        self._saved_wakeup = -1

    def install(self) -> None:
        if not self._in_main:
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._saved[signum] = signal.signal(signum, self._on_signal)
        # SIGCHLD only needs to wake the loop (through the wakeup fd).
        self._saved[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, lambda *_: None)
        self._saved_wakeup = signal.set_wakeup_fd(self._pipe.w, warn_on_full_buffer=False)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signals.append(signum)

    def wake(self) -> None:
        self._pipe.poke()

    def watch(self, fd: int) -> None:
        """Wake also when `fd` is readable (the launcher's socket)."""
        self._selector.register(fd, selectors.EVENT_READ)

    def unwatch(self, fd: int) -> None:
        self._selector.unregister(fd)

    def wait(self, timeout: float) -> None:
        """Sleep until woken or `timeout` seconds have passed."""
        if self._selector.select(timeout=timeout):
            self._pipe.clear()

    def close(self) -> None:
        """Put the previous signal handlers back and close the pipe."""
        if self._in_main:
            signal.set_wakeup_fd(self._saved_wakeup)
            for signum, handler in self._saved.items():
                signal.signal(signum, handler)  # type: ignore[arg-type]
        self._selector.close()
        self._pipe.close()


class Pool:
    """Runs every spec under its own supervisor until every run is final.

    Use once: `Pool(...).run()` returns the pool's exit status (README: Exit status).
    """

    def __init__(
        self,
        specs: Sequence[RunSpec],
        state_root: Path,
        settings: PoolSettings,
        view: View,
        echo: Callable[[str], None],
        feed: Feed | None = None,
    ) -> None:
        self.settings = settings
        self.runs = [RunSlot(spec, state_root / spec.run_id) for spec in specs]
        self._by_id = {run.spec.run_id: run for run in self.runs}
        self._state_root = state_root
        self._requests: dict[str, GpuRequest] = dict(settings.plan.requests)
        self._feed = feed
        self._view = view
        self._echo = echo
        self._allocator = GpuAllocator(settings.plan.host)
        self._preexec = parent_death_hook()
        self._launcher: Launcher | None = None
        self._launcher_fd = -1
        self._launcher_tried = not settings.fork_runs
        self._wakeup = Wakeup()
        # Made at the first report the pool must post itself (a supervisor that
        # died): most pools never need one, nor concurrent.futures' imports.
        self._posts: ThreadPoolExecutor | None = None
        self._abandon_posts = threading.Event()
        # The first SIGINT/SIGTERM; None while not interrupted.
        self.interrupted_by: int | None = None
        # True once every child was SIGKILLed (second signal, or cancel grace over).
        self.forced = False
        self._cancel_deadline: float | None = None

    def run(self) -> int:
        self._wakeup.install()
        try:
            self._loop()
        finally:
            self._shutdown()
        return self._finish()

    # -- the loop

    def _loop(self) -> None:
        while True:
            self._handle_signals()
            self._reap_exited()
            self._end_lingering()
            if self.interrupted_by is None:
                self._admit()
                self._start_waiting()
            elif self._cancel_overdue():
                self.force_kill(
                    f"runs still stopping after {self.settings.cancel_grace:g}s: killing them"
                )
            now = time.monotonic()
            self._collect_reports()
            self._view.update([run.row(now) for run in self.runs], now)
            done = [run for run in self.runs if run.state in states.FINAL_STATES and run.post is None
                    and run.lingering_since is None]
            if len(done) == len(self.runs) and (self._feed is None or self.interrupted_by is not None):
                break
            if self._feed is not None and self.interrupted_by is None:
                self._forget(done)
            self._wakeup.wait(self.settings.tick)

    def wake(self) -> None:
        """Wake the loop now (from any thread): runs may have arrived."""
        self._wakeup.wake()

    def _admit(self) -> None:
        if self._feed is None:
            return
        for spec, request in self._feed.arrivals():
            if spec.run_id in self._by_id:
                continue  # the feed never hands a run twice; a run id is still a key
            run = RunSlot(spec, self._state_root / spec.run_id)
            self.runs.append(run)
            self._by_id[spec.run_id] = run
            self._requests[spec.run_id] = request

    def _forget(self, done: list[RunSlot]) -> None:
        """A service's runs come and go: keep only those not over yet."""
        if not done:
            return
        for run in done:
            del self._by_id[run.spec.run_id]
            self._requests.pop(run.spec.run_id, None)
        self.runs = [run for run in self.runs if run.spec.run_id in self._by_id]

    def _handle_signals(self) -> None:
        while self._wakeup.signals:
            signum = self._wakeup.signals.pop(0)
            if self.interrupted_by is None:
                self.cancel(signum)
            elif not self.forced:
                self.force_kill(f"{signal_name(signum)} again: killing every run now")

    def _reap_exited(self) -> None:
        for run in self.runs:
            if run.proc is not None and run.state in (states.RUNNING, states.STOPPING):
                if run.proc.exited():
                    self.reap(run)
        self._forget_lost_launcher()

    def _launcher_for_start(self) -> Launcher | None:
        """The launcher, started at the first run's start; None: exec."""
        if not self._launcher_tried:
            self._launcher_tried = True
            self._launcher = Launcher.start(self.settings.base_env)
            if self._launcher is not None:
                self._launcher_fd = self._launcher.fileno()
                self._wakeup.watch(self._launcher_fd)
        self._forget_lost_launcher()
        return self._launcher

    def _forget_lost_launcher(self) -> None:
        if self._launcher is not None and self._launcher.gone:
            self._wakeup.unwatch(self._launcher_fd)
            self._launcher = None
            self._view.message("the pool's launcher of supervisors died (its runs got SIGTERM); "
                               "later runs are started by exec")

    def _end_lingering(self) -> None:
        now = time.monotonic()
        for run in self.runs:
            if run.lingering_since is None:
                continue
            if end_run_processes(run.state_dir):
                run.lingering_since = None
                self._processes_gone(run)
            elif now - run.lingering_since > LINGER_LIMIT:
                run.lingering_since = None  # stuck in the kernel: say so, keep its GPUs out of the pool
                self._view.message(f"run {run.spec.run_id}: some of its processes survive SIGKILL; "
                                   f"its GPUs ({','.join(run.gpus or ()) or 'none'}) stay out of the pool")

    def _processes_gone(self, run: RunSlot) -> None:
        """Every process of the run is gone: what they used is final, and its
        GPUs go back to the pool."""
        run.usage = kept_usage(run.state_dir)
        self._release(run)

    def _release(self, run: RunSlot) -> None:
        if run.gpus is not None:
            self._allocator.release(run.gpus)

    def _start_waiting(self) -> None:
        waiting = [run.spec.run_id for run in self.runs if run.state == states.WAITING]
        running = sum(1 for run in self.runs if run.state == states.RUNNING)
        starts, why = next_starts(
            waiting,
            self._requests,
            self._allocator,
            running=running,
            max_parallel=self.settings.max_parallel,
        )
        for run_id, gpus in starts:
            self.start(self._by_id[run_id], gpus)
        for run_id, reason in why.items():
            self._by_id[run_id].why_waiting = reason

    def _cancel_overdue(self) -> bool:
        return (
            not self.forced
            and self._cancel_deadline is not None
            and time.monotonic() > self._cancel_deadline
        )

    def _collect_reports(self) -> None:
        for run in self.runs:
            if run.post is not None and run.post.done():
                note = post_note(run.post)
                run.result = f"{run.result}; {note}{undelivered_note(run.state_dir)}"
                run.post = None

    # -- what is done to one run

    def start(self, run: RunSlot, gpus: tuple[str, ...] | None) -> None:
        run.gpus = gpus
        settings = self.settings
        if self._feed is not None:
            self._feed.started(run.spec)
        try:
            run.proc = spawn(
                settings.argv_of(run.spec),
                child_env(settings.base_env, run.spec, gpus, pci_order=settings.plan.from_nvidia_smi),
                run.state_dir,
                self._preexec,
                self._launcher_for_start(),
            )
        except CannotStart as exc:
            self._fail_to_start(run, str(exc))
            return
        run.state = states.RUNNING
        run.started = time.monotonic()
        run.spawned_at = time.time()

    def _fail_to_start(self, run: RunSlot, why: str) -> None:
        self._release(run)
        run.state, run.result, run.status = states.ERROR, why, EXIT_RUN_ERROR
        run.ended = time.monotonic()
        if run.started is None:
            run.started = run.ended
        if self._feed is not None:
            self._feed.ended(run.spec, run.state)

    def reap(self, run: RunSlot) -> None:
        assert run.proc is not None
        # Whatever the supervisor left in its process group goes with it.
        returncode = run.proc.reap()
        run.ended = time.monotonic()
        # Its GPUs go to another run only once no process of this one lives
        # (a supervisor SIGKILLed leaves that to its workers, and to us).
        if end_run_processes(run.state_dir):
            self._processes_gone(run)
        else:
            run.lingering_since = run.ended
        delivered = read_delivered(run.state_dir)
        if delivered is not None:
            run.entries = delivered
        outcome = classify_exit(returncode, cancelling=self.interrupted_by is not None)
        run.state, run.status, run.result = outcome.state, outcome.status, outcome.result
        if self._feed is not None:
            self._feed.ended(run.spec, run.state)
        if outcome.state == states.ERROR and returncode > 0:
            # The reason the backend got, in full; else the supervisor's last line.
            detail = run_status.reason_line(run_status.read(run.state_dir), run.spawned_at) or \
                without_prefix(last_output_line(run.log_path, run.spec.token), run.spec.run_id)
            if detail:
                run.result = f"{outcome.result}: {detail}"
        if outcome.post_reason is not None:
            if self._posts is None:
                from concurrent.futures import ThreadPoolExecutor

                self._posts = ThreadPoolExecutor(max_workers=8, thread_name_prefix="pool-report")
            run.post = self._posts.submit(
                post_error,
                run.spec,
                outcome.post_reason,
                self.settings.timing,
                self._abandon_posts,
                self.forced,
            )
            run.post.add_done_callback(lambda _f: self._wakeup.wake())

    # -- what is done to every run

    def cancel(self, signum: int) -> None:
        self.interrupted_by = signum
        self._cancel_deadline = time.monotonic() + self.settings.cancel_grace
        self._view.message(
            f"{signal_name(signum)}: cancelling every run (press Ctrl-C again to kill them at once)"
        )
        for run in self.runs:
            if run.state == states.WAITING:
                run.state, run.result = states.CANCELLED, "cancelled before it started"
            elif run.state == states.RUNNING and run.proc is not None:
                # The supervisor only (not its group): it stops its Codex and
                # workers itself, after flushing what they hold. The signal the
                # pool got, so a Ctrl-C is recorded as SIGINT.
                run.proc.signal(signum)
                run.state = states.STOPPING

    def force_kill(self, why: str) -> None:
        self.forced = True
        self._abandon_posts.set()
        self._view.message(why)
        for run in self.runs:
            if run.proc is not None and run.proc.returncode is None:
                run.proc.kill_group()

    # -- the end

    def _shutdown(self) -> None:
        # Reached with children still alive only through an unexpected exception:
        # never leave them behind.
        for run in self.runs:
            if run.proc is not None and run.proc.returncode is None:
                run.proc.kill_group()
                run.proc.reap()
            if run.proc is not None:
                end_run_processes(run.state_dir)
        if self._launcher is not None:
            self._wakeup.unwatch(self._launcher_fd)
            self._launcher.close()
            self._launcher = None
        self._abandon_posts.set()
        if self._posts is not None:
            self._posts.shutdown(wait=True, cancel_futures=True)
        if self._feed is not None:
            self._feed.close()
        self._wakeup.close()

    def _finish(self) -> int:
        """Show the summary; the pool's exit status."""
        now = time.monotonic()
        rows = [run.row(now) for run in self.runs]
        self._view.close()
        status = pool_exit_status((run.status for run in self.runs), self.interrupted_by)
        if self.settings.summary_out is not None:
            self.settings.summary_out(sv.summary_json(rows, status))
        else:
            self._echo(sv.summary(rows))
        for run in self.runs:
            if run.state != states.COMPLETE and run.log_path.exists():
                self._echo(f"run {run.spec.run_id}: its supervisor's output is in {run.log_path}")
        return status
