"""The log-shipper's ordering of bootstrap's entries among Codex's lines, as a
table (no files, no processes)."""

from __future__ import annotations

import pytest

from workers.log_shipper import interleave


@pytest.mark.parametrize("markers,codex_ends,codex_read,expected", [
    # Nothing to place.
    ([], [10, 20], 20, ([], 0)),
    # Entries written before any Codex output come first.
    ([0, 0], [10, 20], 20, ([0, 0], 2)),
    # An entry follows the Codex lines that existed when it was written...
    ([10], [10, 20], 20, ([1], 1)),
    ([15], [10, 20], 20, ([1], 1)),  # written while Codex's second line was half-printed
    ([20, 20], [10, 20], 20, ([2, 2], 2)),
    # ... and the Codex lines after it follow it.
    ([0, 10, 20], [10, 20, 30], 30, ([0, 1, 2], 3)),
    # Lines read in an earlier step: the offsets are the file's, not this step's.
    ([105], [110, 120], 120, ([0], 1)),
    # An entry whose Codex lines are not read yet waits, with every entry after it.
    ([10, 25, 0], [10, 20], 20, ([1], 1)),
    ([30], [], 20, ([], 0)),
])
def test_interleave(markers: list[int], codex_ends: list[int], codex_read: int,
                    expected: tuple[list[int], int]) -> None:
    assert interleave(markers, codex_ends, codex_read) == expected
