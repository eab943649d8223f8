"""The plan of the tree, held: each package of bench/ imports only the ones below it, and cosmos3/ never imports
bench/. Read from the source (every import, also those inside functions), so a climbing import fails here."""

from __future__ import annotations

import ast

import pytest

from tests.repo import REPO

# What each package may import. Measuring and judging never use each other; compare uses both, calibration
# compare, and the command line everything but the benchmark modules (which pytest runs in a child process).
ALLOWED = {
    "core": {"core"},
    "measure": {"core", "measure"},
    "benchmarks": {"core", "measure", "benchmarks"},
    "gate": {"core", "gate"},
    "compare": {"core", "measure", "gate", "compare"},
    "calibrate": {"core", "measure", "gate", "compare", "calibrate"},
    "cli": {"core", "measure", "gate", "compare", "calibrate", "cli"},
}


def imported(path) -> set[str]:
    """The modules a file imports, as dotted names."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def bench_packages(path) -> set[str]:
    """The bench packages a file imports (bench.core.records -> core)."""
    return {name.split(".")[1] for name in imported(path) if name.startswith("bench.") and name.count(".") >= 1}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_those_below_it(package):
    climbing = {str(path.relative_to(REPO)): sorted(bench_packages(path) - ALLOWED[package])
                for path in (REPO / "bench" / package).rglob("*.py")}
    assert not {path: found for path, found in climbing.items() if found}


def test_the_packages_are_the_plan_and_cosmos3_never_imports_bench():
    assert {p.name for p in (REPO / "bench").iterdir() if (p / "__init__.py").is_file()} == set(ALLOWED)
    users = [str(p.relative_to(REPO)) for p in (REPO / "cosmos3").rglob("*.py")
             if any(name == "bench" or name.startswith("bench.") for name in imported(p))]
    assert users == []


def test_the_check_sees_a_climbing_import(tmp_path):
    """The negative control: a measure module that imports the gate, even inside a function, is caught."""
    module = tmp_path / "climbing.py"
    module.write_text("def f():\n    from bench.gate.report import table\n    return table\n")
    assert bench_packages(module) - ALLOWED["measure"] == {"gate"}
