"""The host's GPUs and who holds them (README: Many runs).

The GPUs are the inherited `CUDA_VISIBLE_DEVICES` when it is set (the user
already restricted the set), else the indices listed by `nvidia-smi -L`. None
found means the pool assigns no GPUs. `GpuAllocator` is plain bookkeeping, no
threads or clocks, so every scheduling decision can be tested directly.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable, Mapping, Sequence

from supervisor.background import Background

_NVIDIA_SMI_LINE = re.compile(r"^GPU (\d+):")
# nvidia-smi answers in well under a second; a wedged driver must not hang the pool.
_NVIDIA_SMI_TIMEOUT = 15.0


def discover(env: Mapping[str, str]) -> tuple[str, ...]:
    """The GPUs runs may be given, in the host's order; () when there are none."""
    with Discovery(env) as found:
        return found.result()


class Discovery:
    """discover(), with `nvidia-smi -L` started at once and read by `result()`,
    so a run's start does its other work meanwhile (a context manager: the
    command is never left behind)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._visible = env.get("CUDA_VISIBLE_DEVICES")
        # Looked up on the given PATH, not the pool's own, so the caller's env decides.
        program = None if self._visible is not None else shutil.which("nvidia-smi", path=env.get("PATH"))
        self._command = Background([program, "-L"], env, _NVIDIA_SMI_TIMEOUT) if program else None

    def result(self) -> tuple[str, ...]:
        if self._visible is not None:
            return parse_visible_devices(self._visible)
        done = self._command.result() if self._command is not None else None
        # No driver loaded: nvidia-smi exits non-zero, and that host has no usable GPU.
        if done is None or done.returncode != 0:
            return ()
        return parse_nvidia_smi(done.stdout.decode("utf-8", "replace"))

    def __enter__(self) -> Discovery:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._command is not None:
            self._command.close()


NVIDIA_SMI = "nvidia-smi -L"
NO_NVIDIA_SMI = "nvidia-smi, which is not installed"


def source_of(env: Mapping[str, str]) -> str:
    """Where discover() looks, for messages."""
    if "CUDA_VISIBLE_DEVICES" in env:
        return f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']!r}"
    if shutil.which("nvidia-smi", path=env.get("PATH")) is None:
        return NO_NVIDIA_SMI
    return NVIDIA_SMI


def parse_visible_devices(value: str) -> tuple[str, ...]:
    """CUDA's reading of the variable: a negative index hides it and all after it."""
    devices: list[str] = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        if item.lstrip("-").isdigit() and item.startswith("-"):
            break
        if item not in devices:
            devices.append(item)
    return tuple(devices)


def parse_nvidia_smi(output: str) -> tuple[str, ...]:
    """Indices of `GPU <n>: …` lines (MIG lines below a GPU are not GPUs of their own)."""
    found: list[str] = []
    for line in output.splitlines():
        match = _NVIDIA_SMI_LINE.match(line.strip())
        if match and match.group(1) not in found:
            found.append(match.group(1))
    return tuple(found)


class GpuAllocator:
    """Which GPUs are free; a GPU is never held by two runs at once."""

    def __init__(self, gpus: Sequence[str]) -> None:
        self._order: tuple[str, ...] = tuple(dict.fromkeys(gpus))
        self._held: set[str] = set()

    @property
    def gpus(self) -> tuple[str, ...]:
        return self._order

    @property
    def free(self) -> tuple[str, ...]:
        return tuple(gpu for gpu in self._order if gpu not in self._held)

    def problem(self, want: int | Iterable[str]) -> str | None:
        """Why a request can never be met on this host, or None if it can."""
        if isinstance(want, int):
            if want < 1:
                return f"asks for {want} GPUs; give at least 1"
            if want > len(self._order):
                have = ", ".join(self._order) if self._order else "none"
                return f"asks for {want} GPUs per run but this host has {len(self._order)} ({have})"
            return None
        wanted = tuple(want)
        unknown = [gpu for gpu in wanted if gpu not in self._order]
        if unknown:
            have = ", ".join(self._order) if self._order else "none"
            return f"asks for GPU {', '.join(unknown)}, which this host does not have (GPUs: {have})"
        return None

    def try_acquire(
        self, want: int | Iterable[str], *, avoid: Iterable[str] = ()
    ) -> tuple[str, ...] | None:
        """Take `want` GPUs (a count, or exactly these) if free now, else None.

        `avoid` holds GPUs promised to runs waiting ahead of this one, so a run
        asking for particular GPUs is not starved by runs behind it."""
        avoided = set(avoid)
        if isinstance(want, int):
            if want < 1:
                return None
            candidates = [g for g in self._order if g not in self._held and g not in avoided]
            if len(candidates) < want:
                return None
            taken = tuple(candidates[:want])
        else:
            taken = tuple(dict.fromkeys(want))
            if not taken or any(
                g not in self._order or g in self._held or g in avoided for g in taken
            ):
                return None
        self._held.update(taken)
        return taken

    def release(self, gpus: Iterable[str]) -> None:
        """Give GPUs back; releasing a GPU that is not held is a no-op."""
        self._held.difference_update(gpus)
