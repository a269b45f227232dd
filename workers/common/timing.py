"""Every time-based behaviour of a run, in one frozen value, read once from the
command line and the environment."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

from workers.common.errors import ConfigError

_COUNTS = frozenset({"fetch_tries", "max_restarts"})


@dataclass(frozen=True)
class Timing:
    """Every time-based behaviour, in seconds, so tests can shrink it."""

    heartbeat_interval: float = 30.0
    codex_timeout: float | None = None
    # SIGTERM to Codex's process group, then SIGKILL after this long.
    kill_grace: float = 10.0
    # How long a cancelled run may spend flushing the spool before exiting.
    flush_timeout: float = 15.0
    # A worker whose liveness tick is older than this is killed and replaced.
    liveness_timeout: float = 10.0
    # A worker whose main loop made no progress this long is hung even though
    # its liveness thread still ticks (every blocking call is bounded below it).
    stall_limit: float = 120.0
    # Capped exponential backoff for telemetry calls.
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    # Bootstrap fetch: about 6 tries from 0.5 s.
    fetch_tries: int = 6
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    # A worker that keeps dying is given up on after this many restarts in a row.
    max_restarts: int = 10
    # Control channel (SPEC section 15): poll this often; a backend without one
    # (404/405) is asked again only this often.
    control_poll_interval: float = 1.0
    control_absent_retry: float = 60.0
    # A second start of a run waits this long for the earlier start's processes
    # (orphaned workers finish their last write) before it refuses.
    run_lock_wait: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: float | int | None) -> Timing:
        """Defaults, then FLYWHEEL_TIMING_<FIELD> variables of `env` (default
        os.environ; tests shrink timings this way), then explicit overrides
        from the command line."""
        env = os.environ if env is None else env
        values: dict[str, float | int | None] = {}
        for name in cls.__dataclass_fields__:
            variable = f"FLYWHEEL_TIMING_{name.upper()}"
            raw = env.get(variable)
            if raw:
                try:
                    value = int(raw) if name in _COUNTS else float(raw)
                except ValueError:
                    raise ConfigError(f"{variable}={raw!r} is not a number; fix or unset it") from None
                if not math.isfinite(value) or value < 0:
                    raise ConfigError(f"{variable}={raw!r} is not a finite number of 0 or more; fix or unset it")
                values[name] = value
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
