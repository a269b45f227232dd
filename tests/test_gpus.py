"""GPU discovery (CUDA_VISIBLE_DEVICES, a fake nvidia-smi on PATH) and allocation."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from supervisor.pool.gpus import GpuAllocator, discover, parse_nvidia_smi, parse_visible_devices
from supervisor.preflight import gpu_sandbox_warning

ROOT = Path(__file__).resolve().parent.parent
FAKE_NVIDIA_SMI = ROOT / "examples" / "fake_nvidia_smi"


def fake_path(tmp_path: Path, program: Path | None = FAKE_NVIDIA_SMI) -> str:
    """A PATH with only `python3` and (optionally) a fake `nvidia-smi`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "python3").symlink_to(sys.executable)
    if program is not None:
        (bin_dir / "nvidia-smi").symlink_to(program)
    return str(bin_dir)


def test_nvidia_smi_on_path(tmp_path: Path) -> None:
    path = fake_path(tmp_path)
    assert discover({"PATH": path}) == ("0", "1", "2", "3")
    assert discover({"PATH": path, "FAKE_NVIDIA_SMI_GPUS": "8"}) == tuple(str(i) for i in range(8))
    assert discover({"PATH": path, "FAKE_NVIDIA_SMI_GPUS": "0"}) == ()


def test_inherited_cuda_visible_devices_wins(tmp_path: Path) -> None:
    path = fake_path(tmp_path)
    assert discover({"PATH": path, "CUDA_VISIBLE_DEVICES": "2, 3"}) == ("2", "3")
    # Set but empty: the user hid every GPU.
    assert discover({"PATH": path, "CUDA_VISIBLE_DEVICES": ""}) == ()


def test_no_nvidia_smi_or_a_failing_one(tmp_path: Path) -> None:
    assert discover({"PATH": fake_path(tmp_path, None)}) == ()
    broken = tmp_path / "broken-smi"
    failed = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver"
    broken.write_text(f"#!/bin/sh\necho '{failed}' >&2\nexit 9\n")
    os.chmod(broken, 0o755)
    other = tmp_path / "other"
    other.mkdir()
    (other / "nvidia-smi").symlink_to(broken)
    assert discover({"PATH": str(other)}) == ()


def test_parsers() -> None:
    output = (
        "GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-1)\n"
        "  MIG 3g.40gb     Device  0: (UUID: MIG-2)\n"
        "GPU 1: NVIDIA A100-SXM4-80GB (UUID: GPU-3)\n"
    )
    assert parse_nvidia_smi(output) == ("0", "1")
    assert parse_visible_devices("0,1,-1,2") == ("0", "1")
    assert parse_visible_devices("GPU-abc,GPU-def") == ("GPU-abc", "GPU-def")


def test_allocator_counts_never_share_a_gpu() -> None:
    alloc = GpuAllocator(["0", "1", "2", "3"])
    first = alloc.try_acquire(2)
    second = alloc.try_acquire(2)
    assert first == ("0", "1") and second == ("2", "3")
    assert alloc.try_acquire(1) is None
    alloc.release(first)
    assert alloc.free == ("0", "1")
    assert alloc.try_acquire(2) == ("0", "1")


def test_allocator_explicit_sets_and_promises() -> None:
    alloc = GpuAllocator(["0", "1", "2", "3"])
    assert alloc.try_acquire(["1", "2"]) == ("1", "2")
    assert alloc.try_acquire(["2", "3"]) is None  # 2 is held
    assert alloc.try_acquire(2) == ("0", "3")  # any two free GPUs
    assert alloc.try_acquire(1) is None
    alloc.release(["0", "1", "2", "3"])
    # GPUs promised to a run waiting ahead are not handed to one behind it.
    assert alloc.try_acquire(2, avoid=["0", "1"]) == ("2", "3")
    assert alloc.try_acquire(["0"], avoid=["0"]) is None
    assert alloc.try_acquire(["7"]) is None
    assert alloc.try_acquire(0) is None


def test_allocator_problems() -> None:
    alloc = GpuAllocator(["0", "1"])
    assert alloc.problem(2) is None
    assert alloc.problem(["1"]) is None
    problem = alloc.problem(3)
    assert problem is not None and "has 2" in problem
    problem = alloc.problem(["1", "5"])
    assert problem is not None and "GPU 5" in problem
    assert GpuAllocator([]).problem(1) is not None
    assert alloc.problem(0) is not None


@pytest.mark.parametrize("gpus,mode,warns", [
    (("0", "1"), None, True),  # Codex's default for bootstrap: workspace-write
    (("0",), "workspace-write", True),
    (("0",), "read-only", True),
    (("0",), "danger-full-access", False),
    ((), "workspace-write", False),
])
def test_gpu_sandbox_warning(gpus: tuple[str, ...], mode: str | None, warns: bool) -> None:
    warning = gpu_sandbox_warning(gpus, mode)
    assert (warning is not None) is warns
    if warning:
        assert "neither the GPUs nor the network" in warning and (mode or "workspace-write") in warning


def test_gpus_and_a_sandbox_warn_once_end_to_end(env: Any, backend: Any) -> None:
    run_id, token = backend.create_run(prompt="Train.")
    result = env.run("--run-id", run_id, "--config", str(env.config()), "--server", backend.url,
                     extra={"FLYWHEEL_RUN_TOKEN": token, "CUDA_VISIBLE_DEVICES": "0,1"})
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("neither the GPUs nor the network") == 1
    warnings = [e["message"] for e in backend.entries(run_id) if "neither the GPUs" in e["message"]]
    assert len(warnings) == 1
