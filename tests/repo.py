"""Where the tests find the repository, their data and golden files, and the scripts of tools/ as modules."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"
DATA = REPO / "tests" / "data"  # real CUDA traces (provenance in traces/SOURCES.json), old records
GOLDEN = REPO / "tests" / "golden"  # reviewed outputs and recorded readings


def load_tool(filename: str) -> ModuleType:
    """tools/FILENAME imported under its name with '-' as '_' (and registered, so its dataclasses find it)."""
    spec = importlib.util.spec_from_file_location(Path(filename).stem.replace("-", "_"), TOOLS / filename)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
