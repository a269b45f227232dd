"""`--shard K/N`: one runs file shared by the N tasks of a job array (SPEC section 16).

Task K of N takes every N-th run of the file starting at run K (0-based, in file
order), so across the array every run is executed by exactly one task. Without
`--shard`, a Slurm array task takes its share from Slurm's environment: K is the
task's position in the array (`SLURM_ARRAY_TASK_ID` counted from
`SLURM_ARRAY_TASK_MIN` in steps of `SLURM_ARRAY_TASK_STEP`: `--array=1-4` has
tasks 1..4, the first is shard 0), N is `SLURM_ARRAY_TASK_COUNT`. An array whose
ids are not evenly spaced (`--array=1,4,9`) has no such position: then `--shard`
must be given.

Pure functions over plain data; the pool applies the result after the whole file
was read (every task reports the same bad lines).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from workers.common.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Task `index` of `count` (0 <= index < count)."""

    index: int
    count: int
    # Where it came from, for the line that says which share this task took.
    source: str = "from --shard"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """`K/N` as given to --shard; ConfigError names what is wrong."""
    index_text, slash, count_text = text.strip().partition("/")
    if not slash or not index_text.isdigit() or not count_text.isdigit():
        raise ConfigError(f"--shard {text!r}: write K/N, e.g. --shard 0/4 for the first of 4 tasks")
    index, count = int(index_text), int(count_text)
    if count < 1:
        raise ConfigError(f"--shard {text}: N must be at least 1")
    if index >= count:
        raise ConfigError(f"--shard {text}: K counts from 0, so it must be below N ({count})")
    return Shard(index, count)


_ARRAY_VARS = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN",
               "SLURM_ARRAY_TASK_MAX", "SLURM_ARRAY_TASK_STEP")


def shard_from_env(env: Mapping[str, str]) -> Shard | None:
    """The share of a Slurm job array task, or None outside a job array."""
    if not env.get("SLURM_ARRAY_TASK_ID") or not env.get("SLURM_ARRAY_TASK_COUNT"):
        return None
    values: dict[str, int] = {}
    for name in _ARRAY_VARS:
        raw = env.get(name, "")
        if raw:
            if not raw.isdigit():
                raise ConfigError(f"{name}={raw!r} is not a number; pass --shard K/N yourself")
            values[name] = int(raw)
    task = values["SLURM_ARRAY_TASK_ID"]
    count = values["SLURM_ARRAY_TASK_COUNT"]
    low = values.get("SLURM_ARRAY_TASK_MIN", 0)
    step = values.get("SLURM_ARRAY_TASK_STEP", 1) or 1
    high = values.get("SLURM_ARRAY_TASK_MAX", low + step * (count - 1))
    evenly_spaced = (high - low) == step * (count - 1) and (task - low) % step == 0
    index = (task - low) // step
    if count < 1 or not evenly_spaced or not 0 <= index < count:
        raise ConfigError(
            f"this job array's task ids are not evenly spaced (task {task} of {count}, "
            f"ids {low}..{high} step {step}), so its share of the runs file is not known: "
            "pass --shard K/N (K from 0 to N-1), or submit with --array=0-(N-1), e.g. --array=0-3 for 4 tasks"
        )
    return Shard(index, count, source=f"from SLURM_ARRAY_TASK_ID={task}, SLURM_ARRAY_TASK_COUNT={count}")


def take_share(items: Sequence[T], shard: Shard | None) -> list[T]:
    """Every `count`-th item starting at `index`; all of them without a shard."""
    if shard is None:
        return list(items)
    return list(items[shard.index::shard.count])
