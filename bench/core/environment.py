"""Captures the environment of a run: device, driver, library versions, numerics flags, commit."""

from __future__ import annotations

import datetime
import platform
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import diffusers
import torch

from bench.core.records import Environment

REPO_ROOT = Path(__file__).resolve().parents[2]


def display_path(path: Path | str) -> str:
    """A path as printed and recorded: relative to the repository when inside it, else as given."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except (ValueError, OSError, RuntimeError):  # outside the repository, or unresolvable (a symlink loop)
        return str(path)


def run_label(preset: str, dit_layers: int | None) -> str:
    """The configuration's name, and so its baseline file's: another DiT depth is another baseline."""
    return preset if dit_layers is None else f"{preset}-dit{dit_layers}"


def slugify(text: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3' (the baseline folder name)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def _run(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=REPO_ROOT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_identity(device: torch.device) -> tuple[str, str]:
    """(name, slug). GPUs by model; CPUs as cpu-<model>, so no CPU run meets a GPU baseline."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return name, slugify(name)
    name = cpu_name()
    return name, "cpu-" + slugify(name)


def collect_environment(
    device: torch.device, preset: str, dtype: torch.dtype, negative_controls: tuple[str, ...] = ()
) -> Environment:
    name, slug = device_identity(device)
    commit = _run(["git", "rev-parse", "HEAD"])
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"]) if commit else None
    cuda = device.type == "cuda"
    driver = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]) if cuda else None
    return Environment(
        device_kind=device.type,
        device_name=name,
        device_slug=slug,
        preset=preset,
        dtype=str(dtype).removeprefix("torch."),
        torch=torch.__version__,
        diffusers=diffusers.__version__,
        python=platform.python_version(),
        platform=platform.platform(),
        cuda=torch.version.cuda if cuda else None,
        cudnn=str(torch.backends.cudnn.version()) if cuda else None,
        driver=driver.splitlines()[0] if driver else None,
        cudnn_benchmark=torch.backends.cudnn.benchmark if cuda else None,
        allow_tf32_matmul=torch.backends.cuda.matmul.allow_tf32 if cuda else None,
        commit=commit,
        commit_dirty=bool(status) if commit else None,
        date_utc=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        hostname=socket.gethostname(),
        negative_controls=negative_controls,
        argv=" ".join(sys.argv),
    )
