"""Many runs on one host: the pool behind `--runs FILE` (SPEC sections 12, 13).

Each run gets its own single-run supervisor as a child process (`python -m
supervisor --run-id …`), which brings its own three workers; runs share nothing
but the host, so one crashing never disturbs another. The pool:

- does the shared work once, before any run starts: reads every distinct config
  (a bad one fails everything, exit 2) and finds or downloads Codex (its folder
  goes first on the children's PATH, so no child downloads again);
- hands out GPUs (`--gpus-per-run`, or `gpus=` on a line) through
  `CUDA_VISIBLE_DEVICES`, never one GPU to two runs at once, and holds back runs
  until their GPUs (and a `--max-parallel` slot) are free;
- reports a run whose supervisor was killed by a signal (the supervisor could
  not report it itself) with `POST /runs/{id}/error`;
- on SIGINT/SIGTERM forwards SIGTERM to every supervisor (each cancels its
  Codex and reports `cancelled (SIGTERM)`); a second signal SIGKILLs them all.

Tokens go to children in the environment, never on a command line (`ps` shows
those to every user). Children run in their own sessions, so a Ctrl-C on the
terminal reaches only the pool, which decides what each run gets; and they get
PR_SET_PDEATHSIG, so they do not outlive a SIGKILLed pool.

Each child's stdout/stderr goes to `$FLYWHEEL_HOME/state/<run_id>/pool-output.log`
so the status view stays readable; its last line is shown for a failed run.
"""

from __future__ import annotations

import ctypes
import os
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import orjson

from supervisor import gpus as gpu_discovery
from supervisor import status_view as sv
from supervisor.errors import (
    EXIT_BACKEND,
    EXIT_OK,
    EXIT_PROVISION,
    EXIT_RUN_ERROR,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    EXIT_USAGE,
    BootstrapError,
    ConfigError,
)
from supervisor.gpus import GpuAllocator
from supervisor.runs_file import RunSpec
from supervisor.settings import Timing

# When several runs fail differently, the pool exits with the status the operator
# should act on first: a bad config or usage (fix it and rerun), then Codex that
# could not be provisioned (host problem), then the backend unreachable, then a
# run that merely failed. Interruption (130/143) outranks them all.
EXIT_PRIORITY = (EXIT_USAGE, EXIT_PROVISION, EXIT_BACKEND, EXIT_RUN_ERROR)

OUTPUT_LOG = "pool-output.log"
SHIPPER_STATE = "shipper.json"
# How long the pool keeps retrying the `error` report of a killed supervisor.
_POST_TRIES = 4
# Second signal: one quick try each, so "immediate" stays immediate.
_FORCED_POST_TIMEOUT = (1.0, 2.0)
_POST_TIMEOUT = (5.0, 10.0)
_PR_SET_PDEATHSIG = 1

ChildArgv = Callable[[RunSpec], Sequence[str]]


# ---------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Outcome:
    """What a supervisor's exit status means for its run and for the pool."""

    state: str
    result: str
    # The run's contribution to the pool's exit status.
    status: int
    # Set when the supervisor could not report the run itself: the reason the
    # pool posts with `error`.
    post_reason: str | None = None


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def classify_exit(returncode: int, *, cancelling: bool) -> Outcome:
    """Map a single-run supervisor's exit status (SPEC section 2) to an outcome."""
    if returncode == EXIT_OK:
        # 0 also covers "already claimed elsewhere" (409): not ours to run, not a failure.
        return Outcome(sv.COMPLETE, "completed", EXIT_OK)
    if returncode == EXIT_RUN_ERROR:
        return Outcome(sv.ERROR, "run reported an error (exit 1)", EXIT_RUN_ERROR)
    if returncode == EXIT_USAGE:
        return Outcome(sv.ERROR, "bad usage or config (exit 2)", EXIT_USAGE)
    if returncode == EXIT_BACKEND:
        return Outcome(sv.ERROR, "backend refused or unreachable (exit 3)", EXIT_BACKEND)
    if returncode == EXIT_PROVISION:
        return Outcome(sv.ERROR, "Codex could not be provisioned (exit 4)", EXIT_PROVISION)
    if returncode in (EXIT_SIGINT, EXIT_SIGTERM):
        name = "SIGINT" if returncode == EXIT_SIGINT else "SIGTERM"
        # Cancelled by someone else than the pool: for the pool it is a run that failed.
        return Outcome(sv.CANCELLED, f"cancelled ({name})", EXIT_OK if cancelling else EXIT_RUN_ERROR)
    if returncode < 0:
        name = signal_name(-returncode)
        if cancelling:
            return Outcome(sv.CANCELLED, f"cancelled (supervisor killed by {name})", EXIT_OK,
                           post_reason=f"cancelled ({name})")
        return Outcome(sv.ERROR, f"supervisor killed by {name}", EXIT_RUN_ERROR,
                       post_reason=f"bootstrap supervisor killed by {name}")
    return Outcome(sv.ERROR, f"supervisor exited with status {returncode}", EXIT_RUN_ERROR)


def pool_exit_status(statuses: Iterable[int], interrupted_by: int | None) -> int:
    """The pool's exit status: 130/143 if interrupted, else the most pressing of
    the runs' statuses (EXIT_PRIORITY), else 0."""
    if interrupted_by is not None:
        return EXIT_SIGTERM if interrupted_by == signal.SIGTERM else EXIT_SIGINT
    seen = set(statuses)
    for status in EXIT_PRIORITY:
        if status in seen:
            return status
    return EXIT_RUN_ERROR if seen - {EXIT_OK} else EXIT_OK


GpuRequest = int | tuple[str, ...] | None


@dataclass(frozen=True)
class GpuPlan:
    """GPUs of the host and what each run asks for (None: leave its GPUs alone)."""

    host: tuple[str, ...]
    requests: Mapping[str, GpuRequest]
    from_nvidia_smi: bool


def plan_gpus(
    specs: Sequence[RunSpec], gpus_per_run: int | None, host: tuple[str, ...], source: str
) -> GpuPlan:
    """Decide each run's GPU request, or raise one ConfigError listing every
    request that can never be met on this host."""
    if gpus_per_run is not None and gpus_per_run < 1:
        raise ConfigError(f"--gpus-per-run {gpus_per_run}: give at least 1 (or leave it out)")
    requests: dict[str, GpuRequest] = {}
    for spec in specs:
        requests[spec.run_id] = spec.gpus if spec.gpus is not None else gpus_per_run
    explicit = [gpu for spec in specs for gpu in (spec.gpus or ())]
    universe = host
    if not host and explicit and gpus_per_run is None:
        # No GPUs found, but the user named them: trust the names, still never
        # give one to two runs at once.
        universe = tuple(dict.fromkeys(explicit))
    problems: list[str] = []
    if gpus_per_run is not None:
        if not host:
            problems.append(
                f"--gpus-per-run {gpus_per_run}: no GPUs found on this host ({source} lists none); "
                "leave out --gpus-per-run or check the NVIDIA driver"
            )
        elif gpus_per_run > len(host):
            problems.append(
                f"--gpus-per-run {gpus_per_run}: this host has only {len(host)} GPU"
                f"{'s' if len(host) > 1 else ''} ({', '.join(host)}, from {source}); "
                f"give at most {len(host)}"
            )
    if universe:
        checker = GpuAllocator(universe)
        for spec in specs:
            if spec.gpus is not None:
                problem = checker.problem(spec.gpus)
                if problem:
                    problems.append(f"line {spec.line}: run {spec.run_id!r} {problem} (from {source})")
    if problems:
        raise ConfigError("\n".join(problems))
    return GpuPlan(universe, requests, from_nvidia_smi=bool(host) and source == "nvidia-smi -L")


def next_starts(
    waiting: Sequence[str],
    requests: Mapping[str, GpuRequest],
    allocator: GpuAllocator,
    *,
    running: int,
    max_parallel: int | None,
) -> tuple[list[tuple[str, tuple[str, ...] | None]], dict[str, str]]:
    """Which waiting runs start now (acquiring their GPUs), in file order, and why
    each of the others still waits.

    A run that cannot get its GPUs keeps the GPUs it is waiting for from runs
    behind it, so a run asking for particular GPUs is not starved."""
    starts: list[tuple[str, tuple[str, ...] | None]] = []
    why: dict[str, str] = {}
    promised: set[str] = set()
    for run_id in waiting:
        if max_parallel is not None and running + len(starts) >= max_parallel:
            why[run_id] = f"max-parallel {max_parallel}"
            continue
        want = requests.get(run_id)
        if want is None:
            starts.append((run_id, None))
            continue
        got = allocator.try_acquire(want, avoid=promised)
        if got is None:
            if isinstance(want, int):
                promised.update(allocator.free)
                why[run_id] = f"needs {want} free GPU{'s' if want > 1 else ''}"
            else:
                promised.update(want)
                why[run_id] = f"needs GPU {','.join(want)}"
            continue
        starts.append((run_id, got))
    return starts, why


def supervisor_argv(
    spec: RunSpec, *, heartbeat_interval: float | None, codex_timeout: float | None
) -> list[str]:
    """The single-run command for one run; the token is not on it (see child_env)."""
    argv = [
        sys.executable, "-m", "supervisor",
        "--run-id", spec.run_id,
        "--config", str(spec.config),
        "--server", spec.server,
    ]
    if heartbeat_interval is not None:
        argv += ["--heartbeat-interval", f"{heartbeat_interval:g}"]
    if codex_timeout is not None:
        argv += ["--codex-timeout", f"{codex_timeout:g}"]
    return argv


def child_env(
    base: Mapping[str, str], spec: RunSpec, gpus: tuple[str, ...] | None, *, pci_order: bool
) -> dict[str, str]:
    """The environment of one run's supervisor."""
    env = dict(base)
    env["FLYWHEEL_RUN_TOKEN"] = spec.token
    env["FLYWHEEL_POOL_CHILD"] = "1"
    # The id is on the command line; an inherited one must not hint at another run.
    env.pop("FLYWHEEL_RUN_ID", None)
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        if pci_order:
            # nvidia-smi numbers GPUs in PCI bus order, CUDA by default fastest
            # first: on a mixed host the same index would be another GPU.
            env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    return env


def timing_of(env: Mapping[str, str]) -> Timing:
    """Timing.from_env, read from the pool's env (which may not be os.environ)."""
    values: dict[str, float | int] = {}
    for name in Timing.__dataclass_fields__:
        variable = f"FLYWHEEL_TIMING_{name.upper()}"
        raw = env.get(variable)
        if not raw:
            continue
        try:
            values[name] = int(raw) if name in ("fetch_tries", "max_restarts") else float(raw)
        except ValueError:
            raise ConfigError(f"{variable}={raw!r} is not a number; fix or unset it") from None
    return Timing(**values)  # type: ignore[arg-type]


def flywheel_home_of(env: Mapping[str, str]) -> Path:
    return Path(env.get("FLYWHEEL_HOME") or "~/.flywheel").expanduser()


def read_delivered(state_dir: Path) -> int | None:
    """Entries shipped so far, from the run's shipper state file; None if unknown
    (not written yet, or caught half-written)."""
    try:
        value = orjson.loads((state_dir / SHIPPER_STATE).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    delivered = value.get("delivered") if isinstance(value, dict) else None
    if isinstance(delivered, int) and not isinstance(delivered, bool) and delivered >= 0:
        return delivered
    return None


def last_output_line(path: Path, secret: str) -> str:
    """The last non-blank line the supervisor printed (its error message), with the
    token masked should it ever appear."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(size - 4096, 0))
            tail = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    for line in reversed(tail.splitlines()):
        line = line.strip()
        if line and not line.startswith("--- pool"):
            return line.replace(secret, "***") if secret else line
    return ""


# ---------------------------------------------------------------- shared work


def prepare_shared(
    specs: Sequence[RunSpec], env: Mapping[str, str], echo: Callable[[str], None], *, is_tty: bool
) -> dict[str, str]:
    """Work done once for all runs, before any starts; returns the children's base
    environment. Raises ConfigError (exit 2) or ProvisionError (exit 4)."""
    from supervisor.config import load_config
    from supervisor.provision import find_codex, terminal_progress

    problems: list[str] = []
    for path in dict.fromkeys(spec.config for spec in specs):
        users = [spec.run_id for spec in specs if spec.config == path]
        shown = ", ".join(users[:5]) + (f" and {len(users) - 5} more" if len(users) > 5 else "")
        try:
            config = load_config(path)
        except ConfigError as exc:
            problems.append(f"{exc.message}\n  (the config of run{'s' if len(users) > 1 else ''} {shown})")
            continue
        # Shown once here; each supervisor's copy goes to its own output log.
        for warning in config.warnings:
            echo(f"warning: {warning}")
    if problems:
        raise ConfigError("\n".join(problems) + "\nno run was started")

    base = dict(env)
    codex = find_codex(
        env,
        flywheel_home_of(env),
        mock=bool(env.get("BOOTSTRAP_MOCK_CODEX")),
        echo_progress=terminal_progress() if is_tty else None,
    )
    if codex.source in ("download", "cache"):
        # Not on PATH: put its folder first, so children find it there and never
        # download (or even lock the cache) again.
        folder = os.path.dirname(codex.argv_prefix[0])
        base["PATH"] = os.pathsep.join(p for p in (folder, env.get("PATH", "")) if p)
    return base


# ---------------------------------------------------------------- the pool


@dataclass
class _Run:
    """One run while the pool works (mutable bookkeeping, local to run_pool)."""

    spec: RunSpec
    state_dir: Path
    state: str = sv.WAITING
    why_waiting: str = ""
    proc: subprocess.Popen[bytes] | None = None
    gpus: tuple[str, ...] | None = None
    started: float | None = None
    ended: float | None = None
    result: str = ""
    status: int = EXIT_OK
    entries: int | None = None
    post: Future[str] | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.state_dir / OUTPUT_LOG

    def row(self, now: float) -> sv.RunRow:
        elapsed = None
        if self.started is not None:
            elapsed = (self.ended if self.ended is not None else now) - self.started
        entries = self.entries
        if self.state in (sv.RUNNING, sv.STOPPING):
            entries = read_delivered(self.state_dir)
            if entries is None:
                entries = self.entries
            self.entries = entries
        result = self.result if self.state != sv.WAITING else self.why_waiting
        return sv.RunRow(self.spec.run_id, self.state, elapsed, entries, self.gpus, result)


def _parent_death_hook() -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGTERM when the pool dies, or None
    where prctl does not exist. libc is looked up here, before the fork."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    sigterm = int(signal.SIGTERM)

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, sigterm)
        # The pool may have died between fork and prctl: then nobody would signal us.
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


def _terminal_size() -> tuple[int, int]:
    """The terminal's size; stderr first, where status output usually goes."""
    for stream in (sys.stderr, sys.stdout):
        try:
            size = os.get_terminal_size(stream.fileno())
        except (AttributeError, OSError, ValueError):
            continue
        if size.columns and size.lines:
            return size.columns, size.lines
    fallback = shutil.get_terminal_size((100, 40))
    return fallback.columns, fallback.lines


def _open_output_log(state_dir: Path) -> int:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(state_dir, 0o700)
    fd = os.open(state_dir / OUTPUT_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    os.write(fd, f"--- pool started this run's supervisor at {stamp} ---\n".encode())
    return fd


def _kill_group(pid: int, sig: int) -> None:
    """Signal the supervisor's process group, and the supervisor itself should it
    have moved to another group."""
    for send in (os.killpg, os.kill):
        try:
            send(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _exited_unreaped(pid: int) -> bool:
    """True once the child has exited; it stays a zombie (its pid, and so its
    process group id, cannot be reused) until the pool reaps it."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _post_error(
    spec: RunSpec, reason: str, timing: Timing, abandon: threading.Event, forced: bool
) -> str:
    """Report a run its supervisor could not report; returns a note for the summary."""
    from supervisor.backend_client import Backend

    # Shorter than a run's own timeouts: the pool's exit waits for these reports.
    connect, read = _FORCED_POST_TIMEOUT if forced else _POST_TIMEOUT
    timing = Timing(
        connect_timeout=min(connect, timing.connect_timeout),
        read_timeout=min(read, timing.read_timeout),
        backoff_base=timing.backoff_base,
        backoff_cap=min(timing.backoff_cap, 5.0),
    )
    tries = 1 if forced else _POST_TRIES
    attempts = [0]

    def keep_trying() -> bool:
        attempts[0] += 1
        return attempts[0] < tries and not abandon.is_set()

    body = {
        "summary": f"The bootstrap supervisor of run {spec.run_id} ended without reporting "
        f"({reason}); reported by the bootstrap pool.",
        "reason": reason,
    }
    with Backend(spec.server, spec.run_id, spec.token, timing) as backend:
        answer = backend.post("/error", body, keep_trying=keep_trying, sleep=abandon.wait)
    if answer.ok:
        return "reported to the backend by the pool"
    if answer.status == 409:
        return "the backend already had its outcome"
    got = f"HTTP {answer.status}" if answer.status else "no answer"
    return f"the pool could not report it to the backend ({got})"


def run_pool(
    specs: Sequence[RunSpec],
    *,
    max_parallel: int | None,
    gpus_per_run: int | None,
    heartbeat_interval: float | None,
    codex_timeout: float | None,
    env: Mapping[str, str],
    echo: Callable[[str], None],
    is_tty: bool,
    child_argv: ChildArgv | None = None,
    cancel_grace: float | None = None,
) -> int:
    """Run every spec, each under its own supervisor; return the exit status of
    SPEC section 2 (see EXIT_PRIORITY for mixed outcomes).

    Problems found before any run starts (bad options, GPUs the host does not
    have, a bad config, Codex not provisioned) raise a BootstrapError.
    `child_argv` replaces the supervisor command (tests); `cancel_grace` bounds
    how long cancelled supervisors may take before they are SIGKILLed."""
    if max_parallel is not None and max_parallel < 1:
        raise ConfigError(f"--max-parallel {max_parallel}: give at least 1 (or leave it out)")
    ids = [spec.run_id for spec in specs]
    if len(set(ids)) != len(ids):
        raise ConfigError("the same run id appears twice in the runs; give each run once")
    if not specs:
        raise ConfigError("no runs to start")

    wants_gpus = gpus_per_run is not None or any(spec.gpus is not None for spec in specs)
    host = gpu_discovery.discover(env) if wants_gpus else ()
    plan = plan_gpus(specs, gpus_per_run, host, gpu_discovery.source_of(env))
    timing = timing_of(env)
    try:
        base_env = prepare_shared(specs, env, echo, is_tty=is_tty)
    except KeyboardInterrupt:
        echo("interrupted before any run started")
        return EXIT_SIGINT

    if cancel_grace is None:
        # Time for each supervisor's own shutdown (Codex grace, spool flush, report).
        cancel_grace = timing.kill_grace + timing.flush_timeout + 30.0
    argv_of: ChildArgv = child_argv or (
        lambda spec: supervisor_argv(
            spec, heartbeat_interval=heartbeat_interval, codex_timeout=codex_timeout
        )
    )
    home = flywheel_home_of(env)
    runs = [_Run(spec, home / "state" / spec.run_id) for spec in specs]
    by_id = {run.spec.run_id: run for run in runs}
    allocator = GpuAllocator(plan.host)
    preexec = _parent_death_hook()

    if is_tty:
        columns, lines = _terminal_size()
        view: sv.LiveView | sv.PlainView = sv.LiveView(echo, width=columns, height=lines)
    else:
        view = sv.PlainView(echo)

    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    selector = selectors.DefaultSelector()
    selector.register(wake_r, selectors.EVENT_READ)
    signals_seen: list[int] = []
    in_main = threading.current_thread() is threading.main_thread()
    saved: dict[int, object] = {}
    saved_wakeup = -1
    posts = ThreadPoolExecutor(max_workers=8, thread_name_prefix="pool-report")
    abandon_posts = threading.Event()

    def wake() -> None:
        try:
            os.write(wake_w, b"\0")
        except OSError:
            pass  # pipe full: the loop is awake anyway

    def on_signal(signum: int, _frame: object) -> None:
        signals_seen.append(signum)

    if in_main:
        for signum in (signal.SIGINT, signal.SIGTERM):
            saved[signum] = signal.signal(signum, on_signal)
        # SIGCHLD only needs to wake the loop (through the wakeup fd).
        saved[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, lambda *_: None)
        saved_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)

    interrupted_by: int | None = None
    forced = False
    cancel_deadline: float | None = None

    def start(run: _Run, gpus: tuple[str, ...] | None) -> None:
        run.gpus = gpus
        try:
            log_fd = _open_output_log(run.state_dir)
        except OSError as exc:
            finish_without_start(run, f"could not create {run.state_dir}: {exc.strerror}")
            return
        try:
            run.proc = subprocess.Popen(
                list(argv_of(run.spec)),
                env=child_env(base_env, run.spec, gpus, pci_order=plan.from_nvidia_smi),
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=preexec,
                close_fds=True,
            )
        except OSError as exc:
            finish_without_start(run, f"could not start its supervisor: {exc.strerror or exc}")
            return
        finally:
            os.close(log_fd)
        run.state = sv.RUNNING
        run.started = time.monotonic()

    def finish_without_start(run: _Run, why: str) -> None:
        if run.gpus is not None:
            allocator.release(run.gpus)
        run.state, run.result, run.status = sv.ERROR, why, EXIT_RUN_ERROR
        run.ended = time.monotonic()
        if run.started is None:
            run.started = run.ended

    def reap(run: _Run) -> None:
        assert run.proc is not None
        pid = run.proc.pid
        # Whatever the supervisor left in its process group goes with it, while
        # its zombie still pins the group id.
        _kill_group(pid, signal.SIGKILL)
        returncode = run.proc.wait()
        run.ended = time.monotonic()
        if run.gpus is not None:
            allocator.release(run.gpus)
        delivered = read_delivered(run.state_dir)
        if delivered is not None:
            run.entries = delivered
        outcome = classify_exit(returncode, cancelling=interrupted_by is not None)
        run.state, run.status, run.result = outcome.state, outcome.status, outcome.result
        if outcome.state == sv.ERROR and returncode > 0:
            detail = last_output_line(run.log_path, run.spec.token)
            if detail:
                run.result = f"{outcome.result}: {detail}"
        if outcome.post_reason is not None:
            run.post = posts.submit(
                _post_error, run.spec, outcome.post_reason, timing, abandon_posts, forced
            )
            run.post.add_done_callback(lambda _f: wake())

    def force_kill(why: str) -> None:
        nonlocal forced
        forced = True
        abandon_posts.set()
        view.message(why)
        for run in runs:
            if run.proc is not None and run.proc.returncode is None:
                _kill_group(run.proc.pid, signal.SIGKILL)

    def cancel(signum: int) -> None:
        nonlocal interrupted_by, cancel_deadline
        interrupted_by = signum
        cancel_deadline = time.monotonic() + cancel_grace
        view.message(
            f"{signal_name(signum)}: cancelling every run (press Ctrl-C again to kill them at once)"
        )
        for run in runs:
            if run.state == sv.WAITING:
                run.state, run.result = sv.CANCELLED, "cancelled before it started"
            elif run.state == sv.RUNNING and run.proc is not None:
                try:
                    # The supervisor only (not its group): it stops its Codex and
                    # workers itself, after flushing what they hold.
                    os.kill(run.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                run.state = sv.STOPPING

    try:
        while True:
            while signals_seen:
                signum = signals_seen.pop(0)
                if interrupted_by is None:
                    cancel(signum)
                elif not forced:
                    force_kill(f"{signal_name(signum)} again: killing every run now")
            for run in runs:
                if run.proc is not None and run.proc.returncode is None and run.state in (
                    sv.RUNNING, sv.STOPPING
                ):
                    if _exited_unreaped(run.proc.pid):
                        reap(run)
            if interrupted_by is None:
                waiting = [run.spec.run_id for run in runs if run.state == sv.WAITING]
                running = sum(1 for run in runs if run.state == sv.RUNNING)
                starts, why = next_starts(
                    waiting, plan.requests, allocator, running=running, max_parallel=max_parallel
                )
                for run_id, gpus in starts:
                    start(by_id[run_id], gpus)
                for run_id, reason in why.items():
                    by_id[run_id].why_waiting = reason
            elif (
                not forced
                and cancel_deadline is not None
                and time.monotonic() > cancel_deadline
            ):
                force_kill(f"runs still stopping after {cancel_grace:g}s: killing them")
            now = time.monotonic()
            for run in runs:
                if run.post is not None and run.post.done():
                    note = _post_note(run.post)
                    run.result = f"{run.result}; {note}"
                    run.post = None
            view.update([run.row(now) for run in runs], now)
            if all(run.state in sv.FINAL_STATES and run.post is None for run in runs):
                break
            for key, _ in selector.select(timeout=0.25 if is_tty else 1.0):
                try:
                    while os.read(key.fd, 512):
                        pass
                except BlockingIOError:
                    pass
    finally:
        # Reached with children still alive only through an unexpected exception:
        # never leave them behind.
        for run in runs:
            if run.proc is not None and run.proc.returncode is None:
                _kill_group(run.proc.pid, signal.SIGKILL)
                run.proc.wait()
        abandon_posts.set()
        posts.shutdown(wait=True, cancel_futures=True)
        if in_main:
            signal.set_wakeup_fd(saved_wakeup)
            for signum, handler in saved.items():
                signal.signal(signum, handler)  # type: ignore[arg-type]
        selector.close()
        os.close(wake_r)
        os.close(wake_w)

    now = time.monotonic()
    rows = [run.row(now) for run in runs]
    view.close()
    echo(sv.summary(rows))
    for run in runs:
        if run.state != sv.COMPLETE and run.log_path.exists():
            echo(f"run {run.spec.run_id}: its supervisor's output is in {run.log_path}")
    return pool_exit_status((run.status for run in runs), interrupted_by)


def _post_note(future: Future[str]) -> str:
    try:
        return future.result()
    except BootstrapError as exc:
        return f"the pool could not report it to the backend ({exc.message})"
    except Exception as exc:  # noqa: BLE001 - a report failing must not end the pool
        return f"the pool could not report it to the backend ({type(exc).__name__})"


__all__ = [
    "run_pool",
    "classify_exit",
    "pool_exit_status",
    "plan_gpus",
    "next_starts",
    "supervisor_argv",
    "child_env",
    "prepare_shared",
    "read_delivered",
    "Outcome",
    "GpuPlan",
    "EXIT_PRIORITY",
]
