"""Where a run works and where it keeps its private state (README: Configuration, Where things live).

The workspace is what Codex sees (``--cd``); the state folder
(``$FLYWHEEL_HOME/state/<run_id>``) lies outside it on purpose, so sandboxed
commands never see spool files or credentials, code persistence never commits
them, and a ``git clone`` into an empty workspace still works.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from supervisor.config import CodexConfig
from workers.common.errors import ConfigError
from workers.common.files import make_private_dir
from workers.common.names import MANIFEST_NAME, run_id_problem

RUN_ID_PLACEHOLDER = "<run_id>"
def validate_run_id(run_id: str) -> None:
    """Raise ConfigError unless ``run_id`` follows the one rule for run ids
    (workers.common.names.run_id_problem)."""
    if not run_id:
        raise ConfigError("run id is empty; pass --run-id or set FLYWHEEL_RUN_ID")
    problem = run_id_problem(run_id)
    if problem is not None:
        raise ConfigError(problem)


def resolve_workspace(cfg: CodexConfig, run_id: str, home: Path) -> Path:
    """The run's workspace folder (not created).

    From the config's ``cd``/``workspace_dir``: ``<run_id>`` is replaced by the
    run id, then ``~`` expands, and a relative path is taken from the config
    file's folder (like every other path in that file), not from the current
    directory. Without the key: ``home/runs/<run_id>``.
    """
    validate_run_id(run_id)
    if cfg.workspace_template is None:
        return Path(home).expanduser() / "runs" / run_id
    text = cfg.workspace_template.replace(RUN_ID_PLACEHOLDER, run_id)
    p = Path(os.path.expanduser(text))
    if not p.is_absolute():
        p = cfg.path.parent / p
    return p


def check_apart(workspace: Path, home: Path) -> None:
    """The state folders stay out of Codex's reach (SPEC 4): they hold the
    spool, the run's CODEX_HOME and the git credentials, which its sandboxed
    commands must neither read nor change, and nothing of them is committed."""
    state_root = Path(os.path.realpath(home / "state"))
    real = Path(os.path.realpath(workspace))
    if real == state_root or state_root in real.parents:
        raise ConfigError(f"workspace {workspace} is inside bootstrap's state folders ({state_root}); "
                          "set workspace_dir (or cd) to a folder outside FLYWHEEL_HOME/state")
    if real in state_root.parents:
        raise ConfigError(f"workspace {workspace} holds bootstrap's state folders ({state_root}), which Codex's "
                          "commands must not reach; set workspace_dir (or cd) elsewhere, or FLYWHEEL_HOME outside it")


def prepare_workspace(path: Path) -> None:
    """Create the workspace (parents too) and prove it is writable by creating
    and deleting a file in it; ConfigError otherwise."""
    try:
        _create_workspace(path)
    except ValueError:  # a NUL the config check did not see (an env var, a run id)
        raise ConfigError(f"workspace path {str(path)!r} contains a NUL byte") from None
    except OSError as exc:
        raise ConfigError(
            f"workspace {path} cannot be created: {exc.strerror or exc}; "
            "choose another folder with cd/workspace_dir in the config"
        ) from None
    # os.access lies under root, ACLs and read-only mounts: really try.
    try:
        fd, probe = tempfile.mkstemp(prefix=".flywheel-write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(
            f"workspace {path} is not writable: {exc.strerror or exc}; "
            "fix its permissions or choose another folder with cd/workspace_dir"
        ) from None


def _create_workspace(path: Path) -> None:
    # exists() raises for a name over NAME_MAX (ENAMETOOLONG): it is inside the
    # caller's try on purpose.
    if path.exists() and not path.is_dir():
        raise ConfigError(f"workspace {path} exists but is not a folder; set cd to a folder")
    try:
        if not path.exists():
            # Others must not read the prompt or a cloned private repo; a
            # folder the user made keeps the mode they gave it.
            path.mkdir(parents=True, mode=0o700)
            os.chmod(path, 0o700)
    except FileExistsError:
        pass


def check_manifest_in_roots(workspace: Path, cfg: CodexConfig) -> None:
    """When Codex is sandboxed and ``writable_roots`` are given, the manifest
    must lie inside one of them (compared after resolving symlinks); missing
    roots are created first, so that resolving them is meaningful."""
    if not cfg.sandboxed or not cfg.writable_roots:
        return
    for root in cfg.writable_roots:
        _prepare_root(cfg, root)
    manifest = (workspace / MANIFEST_NAME).resolve()
    for root in cfg.writable_roots:
        if manifest.is_relative_to(root.resolve()):
            return
    roots = ", ".join(str(r) for r in cfg.writable_roots)
    raise ConfigError(
        f"{cfg.path}: the artifact manifest {manifest} is not inside any "
        f"[sandbox_workspace_write] writable_roots ({roots}), so sandboxed Codex could not "
        "write it; add the workspace folder to writable_roots or set cd inside one of them"
    )


def _prepare_root(cfg: CodexConfig, root: Path) -> None:
    label = f"{cfg.path}: [sandbox_workspace_write] writable_roots entry"
    try:
        if root.exists() and not root.is_dir():
            raise ConfigError(f"{label} {root} exists but is not a folder")
        root.mkdir(parents=True, exist_ok=True)
    except ValueError:
        raise ConfigError(f"{label} {str(root)!r} contains a NUL byte") from None
    except OSError as exc:
        raise ConfigError(f"{label} {root} cannot be created: {exc.strerror or exc}") from None


def prepare_state_dir(home: Path, run_id: str) -> Path:
    """Create ``home/state/<run_id>`` (parents too), private to the user (0700,
    also when it already existed), and return it."""
    validate_run_id(run_id)
    state = Path(home).expanduser() / "state" / run_id
    make_private_dir(state, "run state folder", "; check FLYWHEEL_HOME")
    if not state.is_dir():
        raise ConfigError(f"run state folder {state} exists but is not a folder")
    return state
