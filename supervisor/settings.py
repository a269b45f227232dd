"""Frozen settings of a run; built once from the command line, never mutated."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from workers.common.files import flywheel_home
from workers.common.timing import Timing


@dataclass(frozen=True)
class RunSettings:
    """One run as the user asked for it (before the config file is read)."""

    run_id: str
    token: str = field(repr=False)
    config_path: Path
    server: str = "http://localhost:8000"
    timing: Timing = field(default_factory=Timing)
    home: Path = field(default_factory=flywheel_home)
    mock: bool = False
