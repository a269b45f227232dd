"""The README's install paths install THIS program, not the PyPI name
`flywheel-bootstrap` (the original 0.1.9): a clean venv gets the checkout with pip
from its local path, and its `--help` lists `serve`."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Files that tell users how to install or start the tool.
INSTALL_DOCS = ("README.md", "bootstrap.sh", "examples/flywheel-bootstrap.service", "examples/slurm_bootstrap.sbatch")
# The bare package name as an install source: that is the original 0.1.9 on the index.
BARE_NAME = re.compile(
    r"(pip|pipx|uv tool) install (-\S+ )*flywheel-bootstrap(\b|==)|--from flywheel-bootstrap\b|flywheel-bootstrap==0\.2"
)


def test_install_docs_never_name_the_index_package() -> None:
    for name in INSTALL_DOCS:
        for number, line in enumerate((ROOT / name).read_text(encoding="utf-8").splitlines(), 1):
            if BARE_NAME.search(line) and "original" not in line and "Not" not in line:
                pytest.fail(f"{name}:{number} installs the index package, not this program: {line.strip()}")


def test_service_unit_runs_the_venv_the_install_steps_create() -> None:
    unit = (ROOT / "examples/flywheel-bootstrap.service").read_text(encoding="utf-8")
    exec_start = re.search(r"^ExecStart=(\S+)", unit, re.M)
    assert exec_start is not None
    venv = exec_start.group(1).removesuffix("/bin/flywheel-bootstrap")
    assert f"python3 -m venv {venv}" in unit, "the unit's install steps must create the venv ExecStart uses"
    assert f"{venv}/bin/pip install" in unit
    assert f"python3 -m venv {venv}" in (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.timeout(300)
def test_pip_install_from_checkout_into_clean_venv(tmp_path: Path) -> None:
    # A copy of the tracked tree: pip builds in place, which would leave build/
    # folders in the checkout.
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "__pycache__", "*.egg-info", "build", ".pytest_cache"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "--quiet", str(source)],
                         capture_output=True, text=True, timeout=240)
    assert pip.returncode == 0, f"pip install from the checkout failed:\n{pip.stdout}\n{pip.stderr}"
    result = subprocess.run([str(venv / "bin/flywheel-bootstrap"), "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    commands = result.stdout.split("Commands:", 1)[-1]
    assert re.search(r"^\s+serve\s", commands, re.M), result.stdout
    version = subprocess.run([str(venv / "bin/flywheel-bootstrap"), "--version"], capture_output=True,
                             text=True, timeout=60)
    assert not version.stdout.startswith("flywheel-bootstrap 0.1"), version.stdout
