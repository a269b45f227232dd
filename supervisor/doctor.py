"""`flywheel-bootstrap doctor`: is this machine ready to run Flywheel runs? (SPEC 16)

One check per line, ✓ or ✗ with the fix (– for a check that does not apply).
Nothing here claims a run: the token is checked with `GET /runs/{id}/control/poll`,
never the bootstrap GET; Codex is never downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests

from supervisor import mock_agent
from supervisor.config import NO_SANDBOX_MODE, CodexConfig, load_config
from supervisor.pool import gpus as gpu_discovery
from supervisor.preflight import token_problem
from supervisor.provision import CODEX_VERSION, CodexCommand, installed_path, kept_checksum, login_ok
from workers.common import net_trouble
from workers.common.errors import BootstrapError
from workers.common.redact import mask_url_userinfo

OK, FAIL, SKIP = "ok", "fail", "skip"
MARKS = {OK: "✓", FAIL: "✗", SKIP: "–"}
# Below this, a run's spool and workspace may fill the disk mid-run.
MIN_FREE_BYTES = 1024**3
_TIMEOUT = (5.0, 10.0)


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class DoctorInput:
    config: Path | None
    server: str
    run_id: str | None
    token: str | None
    home: Path
    env: Mapping[str, str]


def render(check: Check) -> str:
    line = f"{MARKS[check.status]} {check.name}: {check.detail}"
    return f"{line} — fix: {check.fix}" if check.fix and check.status == FAIL else line


def as_json(checks: list[Check]) -> str:
    return json.dumps({"ok": passed(checks), "checks": [asdict(c) for c in checks]}, ensure_ascii=False)


def passed(checks: list[Check]) -> bool:
    return all(check.status != FAIL for check in checks)


# -- the checks ------------------------------------------------------------------


def check_config(path: Path | None) -> tuple[Check, CodexConfig | None]:
    if path is None:
        return Check("config", FAIL, "no config given and ~/.codex/config.toml does not exist",
                     "pass --config PATH (see examples/config.example.toml)"), None
    try:
        cfg = load_config(path)
    except BootstrapError as exc:
        return Check("config", FAIL, exc.message.splitlines()[0], "fix the file as the message says"), None
    mode = cfg.sandbox_mode or "workspace-write (default)"
    return Check("config", OK, f"{cfg.path} is valid (sandbox {mode})"), cfg


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # FLYWHEEL_HOME too long, or with a NUL: check_state names it
        return False


def find_codex_quietly(env: Mapping[str, str], home: Path) -> CodexCommand | None:
    """The Codex a run would use, without downloading one."""
    if env.get("BOOTSTRAP_MOCK_CODEX"):
        return CodexCommand(mock_agent.command(), "mock")
    on_path = shutil.which("codex", path=env.get("PATH", os.defpath))
    if on_path:
        return CodexCommand((os.path.abspath(on_path),), "path")
    cached = installed_path(home)
    if _is_file(cached) and os.access(cached, os.X_OK):
        return CodexCommand((str(cached),), "cache")
    return None


def _version(codex: CodexCommand, env: Mapping[str, str]) -> str:
    try:
        done = subprocess.run([*codex.argv_prefix, "--version"], env=dict(env), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run it: {exc}"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[-1] if lines else f"`--version` exited with {done.returncode}"


def check_codex(codex: CodexCommand | None, env: Mapping[str, str], home: Path) -> Check:
    if codex is None:
        return Check("codex", SKIP, f"not on PATH and not downloaded yet: the first run downloads "
                     f"{CODEX_VERSION} into {installed_path(home).parent} (or `npm install -g @openai/codex`)")
    if codex.source == "mock":
        return Check("codex", OK, "mock agent (BOOTSTRAP_MOCK_CODEX is set)")
    where = "on PATH" if codex.source == "path" else "downloaded by bootstrap"
    kept = kept_checksum(home) if codex.source != "path" else None
    said = f", archive SHA-256 {kept}" if kept else ""
    return Check("codex", OK, f"{codex.argv_prefix[0]} ({where}), {_version(codex, env)}{said}")


def check_login(codex: CodexCommand | None, cfg: CodexConfig | None, env: Mapping[str, str]) -> Check:
    if codex is None or cfg is None:
        return Check("codex login", SKIP, "needs a valid config and Codex")
    if codex.source == "mock":
        return Check("codex login", OK, "not needed (mock agent)")
    from supervisor.codex_home import prepare_codex_home

    with tempfile.TemporaryDirectory(prefix="flywheel-doctor-") as scratch:
        codex_home = prepare_codex_home(Path(scratch), cfg, env)
        ok, detail = login_ok(codex, codex_home, env)
    if ok:
        return Check("codex login", OK, "logged in")
    if cfg.model_provider and cfg.model_provider != "openai":
        return Check("codex login", OK, f"not logged in, not needed (model_provider {cfg.model_provider!r})")
    said = detail.splitlines()[-1] if detail else "nothing"
    return Check("codex login", FAIL, f"not logged in (codex said: {said})",
                 "run `codex login` (or `printenv OPENAI_API_KEY | codex login --with-api-key`)")


_PROBE = """
import glob, json, socket, sys
gpus = len(glob.glob('/dev/nvidia[0-9]*'))
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), 3).close(); net = True
except OSError:
    net = False
print(json.dumps({'gpus': gpus, 'network': net}))
"""


# Codex's sandbox puts an empty read-only `.git` mount point into each writable
# root that lacks one: the probe must leave no such folder in /tmp or in the
# user's writable roots, so only its own scratch folder is writable.
_NO_WRITABLE_ROOTS = (
    "-c", "sandbox_workspace_write.writable_roots=[]",
    "-c", "sandbox_workspace_write.exclude_slash_tmp=true",
    "-c", "sandbox_workspace_write.exclude_tmpdir_env_var=true",
)


def _probe_target(server: str) -> tuple[str, int]:
    try:
        parts = urlsplit(server)
        return parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # the backend check names what is wrong with the URL
        return "127.0.0.1", 80


def check_sandbox(codex: CodexCommand | None, cfg: CodexConfig | None, env: Mapping[str, str], server: str,
                  host_gpus: int) -> Check:
    """What Codex's sandbox hides, found by running a probe inside it."""
    if cfg is None:
        return Check("sandbox", SKIP, "needs a valid config")
    if cfg.sandbox_mode == NO_SANDBOX_MODE:
        return Check("sandbox", OK, "off (danger-full-access): Codex's commands see every GPU and the network")
    mode = cfg.sandbox_mode or "workspace-write"
    network_on = cfg.raw.get("sandbox_workspace_write", {}).get("network_access") is True \
        if isinstance(cfg.raw.get("sandbox_workspace_write"), dict) else False
    said_net = "network on (network_access = true)" if network_on else \
        "no network (add network_access = true under [sandbox_workspace_write])"
    if codex is None or codex.source == "mock":
        return Check("sandbox", SKIP, f"{mode}: {said_net}; GPUs not probed (no real Codex)")
    from supervisor.codex_home import prepare_codex_home

    host, port = _probe_target(server)
    with tempfile.TemporaryDirectory(prefix="flywheel-doctor-") as scratch:
        codex_home = prepare_codex_home(Path(scratch), cfg, env)
        try:
            done = subprocess.run([*codex.argv_prefix, "sandbox", *_NO_WRITABLE_ROOTS, "--", sys.executable, "-c",
                                   _PROBE, host,
                                   str(port)], env={**env, "CODEX_HOME": str(codex_home)}, cwd=scratch,
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Check("sandbox", FAIL, f"{mode}: the sandbox probe did not run ({exc})",
                         "check bubblewrap (below) and `codex sandbox -- true`")
    try:
        found = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return Check("sandbox", FAIL, f"{mode}: the sandbox probe failed ({tail})",
                     "check bubblewrap (below) and `codex sandbox -- true`")
    gpus = int(found.get("gpus", 0))
    if host_gpus and not gpus:
        said_gpus = f"hides the GPUs (the host has {host_gpus}; inside, /dev has none)"
    else:
        said_gpus = f"{gpus} GPU device{'s' if gpus != 1 else ''} visible inside"
    said_net = f"network {'reachable' if found.get('network') else 'blocked'} inside ({host}:{port})"
    hides = bool(host_gpus and not gpus)
    return Check("sandbox", FAIL if hides else OK, f"{mode}: {said_gpus}; {said_net}",
                 'set sandbox_mode = "danger-full-access" for runs that need the GPUs' if hides else "")


def check_bubblewrap(codex: CodexCommand | None, cfg: CodexConfig | None, env: Mapping[str, str]) -> Check:
    from supervisor.preflight import bundled_bwrap, sandbox_problem

    if cfg is not None and cfg.sandbox_mode == NO_SANDBOX_MODE:
        return Check("bubblewrap", OK, "not needed (no sandbox)")
    if codex is None or codex.source == "mock":
        found = shutil.which("bwrap", path=env.get("PATH"))
        return Check("bubblewrap", OK if found else SKIP,
                     found or "not on PATH (the npm package of Codex bundles its own)")
    problem = sandbox_problem(codex, cfg.sandbox_mode if cfg else None, env)
    if problem:
        return Check("bubblewrap", FAIL, "neither bundled with Codex nor on PATH: every command Codex runs fails",
                     "`apt-get install bubblewrap`, or sandbox_mode = \"danger-full-access\"")
    bundled = bundled_bwrap(Path(os.path.realpath(codex.argv_prefix[0])))
    return Check("bubblewrap", OK, f"{bundled} (bundled with Codex)" if bundled else
                 str(shutil.which("bwrap", path=env.get("PATH"))))


def check_gpus(env: Mapping[str, str]) -> tuple[Check, int]:
    if "CUDA_VISIBLE_DEVICES" in env:
        found = gpu_discovery.discover(env)
        return Check("GPUs", OK if found else FAIL, f"{len(found)} from {gpu_discovery.source_of(env)}",
                     "" if found else "unset CUDA_VISIBLE_DEVICES or list the GPUs runs may use"), len(found)
    program = shutil.which("nvidia-smi", path=env.get("PATH"))
    if program is None:
        return Check("GPUs", SKIP, "nvidia-smi not found: runs get no GPUs (install the NVIDIA driver on a GPU "
                     "host)"), 0
    try:
        done = subprocess.run([program, "-L"], env=dict(env), stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("GPUs", FAIL, f"{program} -L did not answer ({exc})", "check the NVIDIA driver"), 0
    found = gpu_discovery.parse_nvidia_smi(done.stdout) if done.returncode == 0 else ()
    if not found:
        said = (done.stderr.strip().splitlines() or done.stdout.strip().splitlines() or ["no GPU lines"])[-1]
        return Check("GPUs", FAIL, f"{program} -L lists none ({said})", "check the NVIDIA driver (nvidia-smi)"), 0
    return Check("GPUs", OK, f"{len(found)} ({', '.join(found)}) from {program} -L"), len(found)


def check_containment(env: Mapping[str, str]) -> Check:
    """What a run's processes would be held by here (made and removed again)."""
    from workers.run_processes import containment_in_force

    try:
        said = containment_in_force(env).removeprefix("containment: ")
    except OSError as exc:
        return Check("containment", FAIL, f"could not be set up ({exc})",
                     "check /sys/fs/cgroup (cgroup v2) and /proc")
    return Check("containment", OK, said)


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_state(home: Path) -> Check:
    state = home / "state"
    try:
        existing = _nearest_existing(state)
    except (OSError, ValueError) as exc:  # a name over NAME_MAX, a NUL in FLYWHEEL_HOME
        return Check("state folder", FAIL, f"{str(state)!r} cannot be used ({getattr(exc, 'strerror', None) or exc})",
                     "set FLYWHEEL_HOME to a writable folder")
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return Check("state folder", FAIL, f"{state} cannot be created or written ({existing} is not writable)",
                     "set FLYWHEEL_HOME to a writable folder")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".flywheel-doctor-"):
            pass
    except OSError as exc:
        return Check("state folder", FAIL, f"cannot write in {existing} ({exc.strerror})",
                     "set FLYWHEEL_HOME to a writable folder")
    free = shutil.disk_usage(existing).free
    said = f"{state} writable, {free / 1024**3:.1f} GiB free"
    if free < MIN_FREE_BYTES:
        return Check("state folder", FAIL, said, "free some disk space (runs spool Codex's output there)")
    return Check("state folder", OK, said)


def check_backend(server: str, run_id: str | None, token: str | None) -> list[Check]:
    """Reachable (TLS/DNS/refused named), and the token accepted without claiming the run."""
    from workers.common.server_url import validate_server_url

    try:
        base = validate_server_url(server)
    except BootstrapError as exc:
        return [Check("backend", FAIL, exc.message, "pass a URL like https://flywheel.example.com"),
                Check("token", SKIP, "needs a valid --server")]
    # The URL's password must not be printed (it may even be the run token).
    shown = mask_url_userinfo(base)
    bad_token = token_problem(token) if token and run_id else None
    url = f"{base}/runs/{run_id}/control/poll" if run_id else f"{base}/"
    session = requests.Session()
    session.trust_env = False  # as the runs do: a proxy variable must not reroute the check
    headers = {"Accept": "application/json"}
    if token and run_id and bad_token is None:
        headers["X-Run-Token"] = token
    try:
        answer = session.get(url, headers=headers, timeout=_TIMEOUT, allow_redirects=False)
    except requests.RequestException as exc:
        kind = net_trouble.kind_of(exc)
        detail = mask_url_userinfo(f"{base}: {net_trouble.describe(exc, base)}")
        return [Check("backend", FAIL, detail, net_trouble.FIXES[kind]),
                _bad_token_check(bad_token) if bad_token else Check("token", SKIP, "needs the backend")]
    finally:
        session.close()
    reachable = Check("backend", OK, f"{shown} answers (HTTP {answer.status_code})")
    if bad_token:
        return [reachable, _bad_token_check(bad_token)]
    return [reachable, token_check(answer.status_code, run_id, token)]


def _bad_token_check(problem: str) -> Check:
    return Check("token", FAIL, problem, "set FLYWHEEL_RUN_TOKEN to the run's token as the backend gave it")


def token_check(status: int, run_id: str | None, token: str | None) -> Check:
    """What the control poll's status says about the token (pure; table-tested)."""
    if not run_id:
        return Check("token", SKIP, "no --run-id given: token not checked")
    if not token:
        return Check("token", SKIP, "FLYWHEEL_RUN_TOKEN is not set: token not checked")
    if 200 <= status < 300:
        return Check("token", OK, f"accepted for run {run_id} (control poll; the run was not claimed)")
    if status in (401, 403):
        return Check("token", FAIL, f"refused for run {run_id} (HTTP {status})",
                     "check FLYWHEEL_RUN_TOKEN and --run-id")
    if status in (404, 405):
        return Check("token", SKIP, f"not checked: the backend has no control channel for run {run_id} "
                     f"(HTTP {status} for control/poll), and doctor never claims a run to check its token")
    return Check("token", FAIL, f"unexpected HTTP {status} for run {run_id}'s control poll",
                 "check --server and the backend's logs")


def run_checks(given: DoctorInput, on_check: Callable[[Check], None] | None = None) -> list[Check]:
    checks: list[Check] = []

    def add(check: Check) -> None:
        checks.append(check)
        if on_check is not None:
            on_check(check)

    config, cfg = check_config(given.config)
    add(config)
    codex = find_codex_quietly(given.env, given.home)
    add(check_codex(codex, given.env, given.home))
    add(check_login(codex, cfg, given.env))
    gpus, host_gpus = check_gpus(given.env)
    add(check_sandbox(codex, cfg, given.env, given.server, host_gpus))
    add(check_bubblewrap(codex, cfg, given.env))
    add(gpus)
    add(check_containment(given.env))
    add(check_state(given.home))
    for check in check_backend(given.server, given.run_id, given.token):
        add(check)
    return checks
