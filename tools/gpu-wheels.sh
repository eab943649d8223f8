#!/usr/bin/env bash
# Download the wheels a GPU runner lacks beside its torch, for CPython 3.12 on x86-64 Linux: nox,
# diffusers, accelerate and everything they need, less what a GPU image with torch, numpy, scipy,
# matplotlib, pytest and pytest-benchmark already has (ON_RUNNER below). For a runner with no network.
# Usage, from the repository root:  bash tools/gpu-wheels.sh [DEST=.whl] [extra==pins ...]
# Then copy DEST to the runner (.whl/ is git-ignored) and install there with
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site DEST/*.whl
#   export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
# after which the nox sessions find every dependency present and install nothing.
# It ends by checking that every requirement of the downloaded wheels is downloaded too or in ON_RUNNER.
set -euo pipefail
dest=${1:-.whl}; shift || true
mkdir -p "$dest"
pkgs=(
  diffusers==0.42.1 accelerate tqdm nvidia-ml-py transformers==5.24.0      # the project's own
  tokenizers==0.23.3 typer shellingham rich markdown-it-py mdurl           # transformers' (typer's, rich's)
  importlib_metadata zipp lazy-importer regex requests safetensors filelock # diffusers'
  huggingface_hub hf-xet click httpx2 httpcore2 anyio h11 truststore pyyaml typing-extensions
  charset_normalizer idna urllib3 certifi psutil                            # requests', accelerate's
  nox==2026.10.20 argcomplete attrs colorlog dependency-groups humanize packaging platformdirs
  python-discovery virtualenv distlib                                       # nox's
  "$@")
# On the GPU image already: torch and its needs, numpy, scipy, matplotlib and its needs, pytest, pytest-benchmark.
ON_RUNNER=(torch filelock typing-extensions sympy networkx jinja2 markupsafe fsspec mpmath setuptools triton
           numpy scipy matplotlib contourpy cycler fonttools kiwisolver packaging pillow pyparsing python-dateutil six
           pytest iniconfig pluggy pygments pytest-benchmark py-cpuinfo)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$dest" "${pkgs[@]}"
ls "$dest"
python3 - "$dest" "${ON_RUNNER[@]}" <<'EOF'
"""Every requirement of a wheel in DEST, for CPython 3.12 on x86-64 Linux, is met in DEST or named on the runner."""
import re
import sys
import zipfile
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:  # pip carries its own copy
    from pip._vendor.packaging.requirements import Requirement

RUNNER = {
    "python_version": "3.12", "python_full_version": "3.12.3", "implementation_version": "3.12.3",
    "implementation_name": "cpython", "platform_python_implementation": "CPython",
    "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
    "extra": "",
}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


dest, on_runner = Path(sys.argv[1]), {canonical(n) for n in sys.argv[2:]}
versions, needs = {}, []
for wheel in sorted(dest.glob("*.whl")):
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(metadata).decode()
    name = canonical(re.search(r"^Name: *(.+)$", text, re.M).group(1).strip())
    versions[name] = re.search(r"^Version: *(.+)$", text, re.M).group(1).strip()
    needs += [(Requirement(line), name) for line in re.findall(r"^Requires-Dist: *(.+)$", text, re.M)]
gaps = []
for req, needed_by in needs:
    name = canonical(req.name)
    if req.marker is not None and not req.marker.evaluate(RUNNER):
        continue
    if name in versions and not req.specifier.contains(versions[name], prereleases=True):
        gaps.append(f"{req} (for {needed_by}): downloaded {versions[name]}")
    elif name not in versions and name not in on_runner:
        gaps.append(f"{req} (for {needed_by}): neither downloaded nor in ON_RUNNER")
for gap in gaps:
    print(f"gpu-wheels: unmet: {gap}", file=sys.stderr)
sys.exit(1 if gaps else 0)
EOF
