"""The pool's decisions, as pure functions over plain data (docs/design.md:
Many runs): what a supervisor's exit status means, the pool's own exit status, which GPUs
each run gets and which waiting runs start now, and each run's supervisor
command and environment."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from supervisor.pool import states
from supervisor.pool.gpus import NO_NVIDIA_SMI, NVIDIA_SMI, GpuAllocator
from supervisor.pool.runs_file import RunSpec
from supervisor.signals import signal_name
from workers.common.errors import (
    EXIT_BACKEND,
    EXIT_OK,
    EXIT_PROVISION,
    EXIT_RUN_ERROR,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    EXIT_UNREPORTED,
    EXIT_USAGE,
    ConfigError,
)

# When several runs fail differently, the pool exits with the status the operator
# should act on first: a bad config or usage (fix it and rerun), then Codex that
# could not be provisioned (host problem), then the backend unreachable, then a
# run that merely failed. Interruption (130/143) outranks them all.
EXIT_PRIORITY = (EXIT_USAGE, EXIT_PROVISION, EXIT_BACKEND, EXIT_RUN_ERROR)

# The command that starts one run's supervisor (tests replace supervisor_argv).
ChildArgv = Callable[[RunSpec], Sequence[str]]


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


# The signals a supervisor stops on, reporting the run cancelled (supervisor.signals):
# it exits 128 + the signal (130/143, and 129/131 for SIGHUP/SIGQUIT).
_CANCELLING = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT})


def classify_exit(returncode: int, *, cancelling: bool) -> Outcome:
    """Map a single-run supervisor's exit status (README: Exit status) to an outcome."""
    if returncode == EXIT_OK:
        # 0 also covers "already claimed elsewhere" (409): not ours to run, not a failure.
        return Outcome(states.COMPLETE, "completed", EXIT_OK)
    if returncode == EXIT_RUN_ERROR:
        return Outcome(states.ERROR, "run reported an error (exit 1)", EXIT_RUN_ERROR)
    if returncode == EXIT_USAGE:
        return Outcome(states.ERROR, "bad usage or config (exit 2)", EXIT_USAGE)
    if returncode == EXIT_BACKEND:
        return Outcome(states.ERROR, "backend refused or unreachable (exit 3)", EXIT_BACKEND)
    if returncode == EXIT_PROVISION:
        return Outcome(states.ERROR, "Codex could not be provisioned (exit 4)", EXIT_PROVISION)
    if returncode == EXIT_UNREPORTED:
        return Outcome(states.ERROR, f"bootstrap failed and could not report the run (exit {EXIT_UNREPORTED})",
                       EXIT_RUN_ERROR, post_reason="bootstrap failed: its supervisor could not report the run "
                       "(see crash.log or pool-output.log in the run's state folder)")
    if returncode - 128 in _CANCELLING:
        name = signal_name(returncode - 128)
        # Cancelled by someone else than the pool: for the pool it is a run that failed.
        return Outcome(states.CANCELLED, f"cancelled ({name})", EXIT_OK if cancelling else EXIT_RUN_ERROR)
    if returncode < 0:
        name = signal_name(-returncode)
        if cancelling:
            return Outcome(states.CANCELLED, f"cancelled (supervisor killed by {name})", EXIT_OK,
                           post_reason=f"cancelled ({name})")
        return Outcome(states.ERROR, f"supervisor killed by {name}", EXIT_RUN_ERROR,
                       post_reason=f"bootstrap supervisor killed by {name}")
    return Outcome(states.ERROR, f"supervisor exited with status {returncode}", EXIT_RUN_ERROR)


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
                f"--gpus-per-run {gpus_per_run}: no GPUs found on this host ("
                + ("nvidia-smi is not installed" if source == NO_NVIDIA_SMI else f"{source} lists none")
                + "); leave out --gpus-per-run or check the NVIDIA driver"
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
    return GpuPlan(universe, requests, from_nvidia_smi=bool(host) and source == NVIDIA_SMI)


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
