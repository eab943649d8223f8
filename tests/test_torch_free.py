"""Modules that import no torch: the compare protocol and the run controls it carries, the statistics, the gate's
rules (and the kind registry they read), and calibration's analysis. Each is imported in a fresh interpreter, since this one has torch loaded already."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.repo import REPO


@pytest.mark.slow  # each in a fresh interpreter
@pytest.mark.parametrize("module", ["bench.compare.protocol", "bench.measure.controls", "bench.gate.stats", "bench.gate.rules",
                                    "bench.calibrate.gate"])
def test_module_imports_no_torch(module):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    code = f"import sys, {module}; assert 'torch' not in sys.modules, '{module} imports torch'"
    child = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                           check=False, timeout=120)
    assert child.returncode == 0, child.stderr[-2000:]
