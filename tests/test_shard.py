"""`--shard K/N` and its default from a Slurm job array (supervisor/pool/shard.py)."""

from __future__ import annotations

import pytest

from supervisor.pool.shard import Shard, parse_shard, shard_from_env, take_share
from workers.common.errors import ConfigError


@pytest.mark.parametrize(("text", "expected"), [
    ("0/1", (0, 1)),
    ("0/4", (0, 4)),
    ("3/4", (3, 4)),
    (" 1/2 ", (1, 2)),
])
def test_parse_shard(text: str, expected: tuple[int, int]) -> None:
    shard = parse_shard(text)
    assert (shard.index, shard.count) == expected


@pytest.mark.parametrize(("text", "says"), [
    ("4/4", "must be below N"),
    ("1/0", "at least 1"),
    ("1", "write K/N"),
    ("a/b", "write K/N"),
    ("-1/2", "write K/N"),
    ("1/2/3", "write K/N"),
])
def test_parse_shard_refuses(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_shard(text)


def array(task: int, count: int, low: int, high: int, step: int = 1) -> dict[str, str]:
    return {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_COUNT": str(count),
            "SLURM_ARRAY_TASK_MIN": str(low), "SLURM_ARRAY_TASK_MAX": str(high),
            "SLURM_ARRAY_TASK_STEP": str(step)}


@pytest.mark.parametrize(("env", "expected"), [
    ({}, None),
    ({"SLURM_JOB_ID": "7"}, None),                       # a job, but no array
    (array(0, 2, 0, 1), (0, 2)),                          # --array=0-1
    (array(1, 2, 0, 1), (1, 2)),
    (array(1, 4, 1, 4), (0, 4)),                          # --array=1-4: ids need not start at 0
    (array(4, 4, 1, 4), (3, 4)),
    (array(7, 3, 3, 7, 2), (2, 3)),                       # --array=3-7:2 -> 3, 5, 7
    ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "3"}, (2, 3)),  # older Slurm: no MIN
])
def test_shard_from_slurm_array(env: dict[str, str], expected: tuple[int, int] | None) -> None:
    shard = shard_from_env(env)
    assert (None if shard is None else (shard.index, shard.count)) == expected


@pytest.mark.parametrize("env", [
    array(4, 2, 1, 4),                                   # --array=1,4: no position
    array(6, 3, 3, 7, 2),                                # not on the step
    {**array(1, 2, 0, 1), "SLURM_ARRAY_TASK_ID": "x"},
])
def test_shard_from_an_irregular_array_asks_for_shard(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="--shard K/N"):
        shard_from_env(env)


@pytest.mark.parametrize(("count", "shards"), [(5, 2), (3, 8), (10, 3), (1, 1), (7, 7)])
def test_every_item_exactly_once_across_the_array(count: int, shards: int) -> None:
    items = [f"r{i}" for i in range(count)]
    taken = [item for k in range(shards) for item in take_share(items, Shard(k, shards))]
    assert sorted(taken) == sorted(items)


@pytest.mark.parametrize(("shard", "expected"), [
    (None, ["a", "b", "c", "d", "e"]),
    (Shard(0, 2), ["a", "c", "e"]),
    (Shard(1, 2), ["b", "d"]),
    (Shard(2, 3), ["c"]),
    (Shard(4, 6), ["e"]),
    (Shard(5, 6), []),
])
def test_take_share(shard: Shard | None, expected: list[str]) -> None:
    assert take_share(["a", "b", "c", "d", "e"], shard) == expected
