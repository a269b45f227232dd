"""`flywheel-bootstrap prune [--older-than 7d]`: remove the state folders of runs that
ended (and their workspaces when they are bootstrap's default ones, under
~/.flywheel/runs/), like `uv cache prune`. A workspace the user's config placed
elsewhere is never touched: it may hold their work."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from supervisor.logs_view import supervisor_alive
from supervisor.run_lock import lock_to_remove, run_locked
from workers.run_processes import RunProcesses


@dataclass(frozen=True)
class Prunable:
    run_id: str
    folders: tuple[Path, ...]
    idle_s: float
    size: int
    # Its bootstrap was killed whole and left processes running: they are
    # ended (workers.run_processes.sweep_left_processes) before it is removed.
    left_running: bool = False


def _walk_files(folder: Path) -> Iterator[os.stat_result]:
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                yield os.lstat(os.path.join(root, name))
            except OSError:
                continue


def last_change(folder: Path) -> float:
    """The newest modification time in the folder (the folder's own, if empty)."""
    newest = folder.stat().st_mtime
    for st in _walk_files(folder):
        newest = max(newest, st.st_mtime)
    return newest


def size_of(folder: Path) -> int:
    return sum(st.st_size for st in _walk_files(folder))


def left_running(state_dir: Path) -> bool:
    """Processes that the run's Codex started are still alive although its
    bootstrap is gone (killed whole): only its containment record finds them."""
    record = RunProcesses.load(state_dir)
    return record is not None and bool(record.members())


def find_prunable(home: Path, older_than: float, now: float | None = None) -> list[Prunable]:
    """Runs whose bootstrap and workers are gone and whose state folder has not
    changed for `older_than` seconds, oldest first."""
    now = time.time() if now is None else now
    state_root = home / "state"
    found: list[Prunable] = []
    if not state_root.is_dir():
        return found
    for state_dir in sorted(state_root.iterdir()):
        if not state_dir.is_dir() or state_dir.is_symlink() or supervisor_alive(state_dir) \
                or run_locked(state_dir):
            continue
        idle = now - last_change(state_dir)
        if idle < older_than:
            continue
        folders = [state_dir]
        workspace = home / "runs" / state_dir.name
        if workspace.is_dir() and not workspace.is_symlink():
            folders.append(workspace)
        found.append(Prunable(state_dir.name, tuple(folders), idle, sum(size_of(f) for f in folders),
                              left_running(state_dir)))
    return sorted(found, key=lambda p: -p.idle_s)


def remove(item: Prunable) -> str | None:
    """Delete the run's folders; a problem as text, or None. A run that left
    processes running must have had them ended first (its record is gone)."""
    if item.left_running and left_running(item.folders[0]):
        return "the processes its bootstrap left running could not be ended"
    lock = lock_to_remove(item.folders[0])
    if lock is None:
        return "it was started again meanwhile"
    try:
        for folder in item.folders:
            try:
                shutil.rmtree(folder)
            except OSError as exc:
                return f"{folder}: {exc.strerror or exc}"
        return None
    finally:
        os.close(lock)
