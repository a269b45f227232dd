"""Everything that is checked before the first request to the backend: run id,
server URL, token, config, workspace, state folder, Codex and its login.

A failure here is exit 2 (or 4 for a failed Codex download) and nothing is
reported to the backend: the run has not been claimed yet.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from supervisor.codex_home import prepare_codex_home
from supervisor.config import DEFAULT_SANDBOX_MODE, NO_SANDBOX_MODE, CodexConfig, load_config, sandbox_args
from supervisor.git_persist import max_commit_file_bytes
from supervisor.pool import gpus as gpu_discovery
from supervisor.provision import CodexCommand, LoginCheck, find_codex, terminal_progress
from supervisor.settings import RunSettings
from supervisor.workspace import (
    check_apart,
    check_manifest_in_roots,
    prepare_state_dir,
    prepare_workspace,
    resolve_workspace,
    validate_run_id,
)
from workers.artifacts import blob_threshold_from_env
from workers.common.errors import ConfigError
from workers.common.redact import MIN_SECRET_LEN
from workers.common.server_url import validate_server_url

LOGIN_HELP = (
    "Codex is not logged in. Run `codex login` on this machine (or "
    "`printenv OPENAI_API_KEY | codex login --with-api-key`), then start bootstrap again."
)


@dataclass(frozen=True)
class Prepared:
    """A run that passed every local check."""

    settings: RunSettings
    server: str
    config: CodexConfig
    workspace: Path
    state_dir: Path
    codex_home: Path
    codex: CodexCommand
    sandbox: tuple[str, ...]
    blob_threshold: int
    git_max_file_bytes: int
    notes: tuple[str, ...] = ()  # warnings worth a log entry once the run starts
    env: Mapping[str, str] = field(default_factory=dict, repr=False)


def check_token(token: str) -> None:
    """ConfigError naming what is wrong with the run token, never showing it."""
    problem = token_problem(token)
    if problem:
        raise ConfigError(problem)


def token_problem(token: str) -> str | None:
    """Why `token` cannot be a run token (without showing it), or None."""
    if not token or not token.strip():
        return "the run token is empty: pass --token or set FLYWHEEL_RUN_TOKEN"
    if any(ch.isspace() or unicodedata.category(ch) == "Cc" for ch in token):
        return "the run token contains whitespace or control characters; copy it again"
    bad = next((i for i, ch in enumerate(token) if ord(ch) > 0xFF), None)
    if bad is not None:
        # http.client sends headers as Latin-1; anything else dies inside it.
        return (f"the run token has a character that cannot go in an HTTP header (character {bad + 1} is "
                "not Latin-1); copy it again")
    if len(token) < MIN_SECRET_LEN:
        return (f"the run token is {len(token)} characters long; bootstrap masks only secrets of "
                f"{MIN_SECRET_LEN} or more in what it ships, so it refuses a shorter token; copy it again")
    return None


def bundled_bwrap(binary: Path) -> Path | None:
    """The bubblewrap the npm package of Codex ships: `codex-resources/bwrap` beside
    the binary's `bin/` folder (0.169: vendor/<triple>/{bin/codex,codex-resources/bwrap})."""
    for folder in (binary.parent, binary.parent.parent):
        if (folder / "codex-resources" / "bwrap").exists():
            return folder / "codex-resources" / "bwrap"
    return None


def sandbox_problem(codex: CodexCommand, mode: str | None, env: Mapping[str, str]) -> str | None:
    """Codex's sandbox on Linux runs commands under bubblewrap: the npm package
    bundles it next to the binary, a bare binary relies on the system's. Without
    either, every command Codex runs fails (and the run still "succeeds")."""
    if codex.source == "mock" or mode == NO_SANDBOX_MODE:
        return None
    binary = Path(os.path.realpath(codex.argv_prefix[0]))
    if bundled_bwrap(binary) or shutil.which("bwrap", path=env.get("PATH")):
        return None
    return (f"Codex's sandbox needs bubblewrap, which is neither bundled with {binary} nor on PATH, so "
            "every command Codex runs may fail: install it (e.g. `apt-get install bubblewrap`) or set "
            'sandbox_mode = "danger-full-access" in the config')


def gpu_sandbox_warning(gpus: Sequence[str], mode: str | None) -> str | None:
    """Under `workspace-write` and `read-only` Codex runs commands in bubblewrap
    with a minimal /dev (no /dev/nvidia*) and no network: GPU work needs
    danger-full-access, so say so once when this host has GPUs."""
    sandbox = mode or DEFAULT_SANDBOX_MODE
    if not gpus or sandbox == NO_SANDBOX_MODE:
        return None
    return (f"this host has GPUs ({', '.join(gpus)}), but in the {sandbox} sandbox Codex's commands see neither "
            'the GPUs nor the network; set sandbox_mode = "danger-full-access" in the config for GPU work '
            "(see the README's Configuration section)")


def prepare(settings: RunSettings, env: Mapping[str, str], warn: Callable[[str], None],
            meanwhile: Callable[[], object] = lambda: None,
            hold: Callable[[Path], object] = lambda state_dir: None) -> Prepared:
    """Every local check, in order; `meanwhile` is the caller's own start-up
    work (its imports), done while `codex login status` runs. `hold(state_dir)`
    claims the run on this machine (supervisor.run_lock) before anything of a
    run that may already be running here is touched: its workspace, its
    CODEX_HOME."""
    validate_run_id(settings.run_id)
    server = validate_server_url(settings.server)
    check_token(settings.token)
    cfg = load_config(settings.config_path)
    notes = list(cfg.warnings)
    sandbox = tuple(sandbox_args(cfg.sandbox_mode))
    workspace = resolve_workspace(cfg, settings.run_id, settings.home)
    check_apart(workspace, settings.home)
    state_dir = prepare_state_dir(settings.home, settings.run_id)
    hold(state_dir)
    prepare_workspace(workspace)
    check_manifest_in_roots(workspace, cfg)
    codex_home = prepare_codex_home(state_dir, cfg, env)
    blob_threshold = blob_threshold_from_env(env)
    git_max_file_bytes = max_commit_file_bytes(env)
    progress = terminal_progress()
    try:
        codex = find_codex(env, settings.home, mock=settings.mock, echo_progress=progress)
    finally:
        if progress is not None:
            progress.finish()
    # The slow steps of a start side by side: `codex login status` and
    # `nvidia-smi -L` answer in processes of their own while `meanwhile` runs.
    with contextlib.ExitStack() as running:
        login = running.enter_context(LoginCheck(codex, codex_home, env))
        gpus = running.enter_context(gpu_discovery.Discovery(env)) \
            if codex.source != "mock" and cfg.sandbox_mode != NO_SANDBOX_MODE else None
        if problem := sandbox_problem(codex, cfg.sandbox_mode, env):
            notes.append(problem)
        meanwhile()
        if gpus is not None and (warning := gpu_sandbox_warning(gpus.result(), cfg.sandbox_mode)):
            notes.append(warning)
        ok, detail = login.result()
    if not ok:
        if cfg.model_provider and cfg.model_provider != "openai":
            notes.insert(len(cfg.warnings), (
                f"`codex login status` failed, going on because model_provider is {cfg.model_provider!r} "
                "(a local or self-hosted model needs no login)"
            ))
        else:
            raise ConfigError(f"{LOGIN_HELP}\n(codex said: {detail.splitlines()[-1] if detail else 'nothing'})")
    for note in notes:
        warn(note)
    return Prepared(
        settings=settings,
        server=server,
        config=cfg,
        workspace=workspace,
        state_dir=state_dir,
        codex_home=codex_home,
        codex=codex,
        sandbox=sandbox,
        blob_threshold=blob_threshold,
        git_max_file_bytes=git_max_file_bytes,
        notes=tuple(notes),
        env=dict(env),
    )


def codex_env(prep: Prepared, payload: Mapping[str, object]) -> dict[str, str]:
    """The user's environment plus what Codex and its commands need to know."""
    s = prep.settings
    env = dict(prep.env)
    env.update(
        FLYWHEEL_RUN_ID=s.run_id,
        FLYWHEEL_RUN_TOKEN=s.token,
        FLYWHEEL_SERVER=prep.server,
        FLYWHEEL_WORKSPACE=str(prep.workspace),
        CODEX_HOME=str(prep.codex_home),
    )
    # Handed to the experiment's own tools under their usual names.
    for key, var in (("wandb_api_key", "WANDB_API_KEY"), ("hf_token", "HF_TOKEN")):
        value = payload.get(key)
        if isinstance(value, str) and value:
            env[var] = value
    return env


def payload_secrets(token: str, payload: Mapping[str, object]) -> tuple[str, ...]:
    found = [token]
    for key in ("github_token", "wandb_api_key", "hf_token"):
        value = payload.get(key)
        if isinstance(value, str) and value:
            found.append(value)
    return tuple(found)

