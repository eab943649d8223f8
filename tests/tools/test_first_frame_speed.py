"""tools/first_frame_speed.py on the CPU at tiny sizes: what a GPU call cut short by its budget or its time
limit leaves. A skipped resolution measures nothing, a skipped or failed mode is not run again in the error
check, and the JSON holds every part measured so far."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tests.repo import REPO


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("first_frame_speed", REPO / "tools" / "first_frame_speed.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def argv(out: Path, resolutions: str = "48x32,32x32") -> list[str]:
    return ["--preset", "tiny", "--device", "cpu", "--dtype", "float32", "--resolutions", resolutions, "--rounds", "2",
            "--warmup", "0", "--compile-modes", "none", "--matmul-n", "32", "--json", str(out)]  # fmt: skip


def test_a_budget_spent_after_the_first_resolution_skips_the_second(tool, tmp_path, monkeypatch):
    measure = tool.measure_resolution

    def then_spent(vae, width, height, args, *rest):
        result = measure(vae, width, height, args, *rest)
        args.budget_s = -1.0  # every later setup would start past the budget
        return result

    monkeypatch.setattr(tool, "measure_resolution", then_spent)
    assert tool.main(argv(tmp_path / "speed.json")) == 0  # the old tool: ZeroDivisionError (r % len([]))
    first, second = json.loads((tmp_path / "speed.json").read_text())["results"]
    assert all(v["samples_ms"] for v in first["variants"]) and first["errors"]
    assert all(v["skipped"].startswith("budget: ") and not v["samples_ms"] for v in second["variants"])
    assert second["errors"] == []  # nothing measured, nothing checked


def test_the_error_check_runs_only_the_modes_that_were_measured(tool, tmp_path, monkeypatch):
    build = tool.build_variants

    def broken(pixels):
        raise RuntimeError("capture failed")

    def with_a_broken_mode(vae, args):
        variants, encoders = build(vae, args)
        encoders["first_frame_2d broken"] = broken
        return [*variants, tool.Variant("first_frame_2d broken", broken)], encoders

    monkeypatch.setattr(tool, "build_variants", with_a_broken_mode)
    assert tool.main(argv(tmp_path / "speed.json", "48x32")) == 1  # a setup failed: the exit status says so
    (result,) = json.loads((tmp_path / "speed.json").read_text())["results"]
    assert result["variants"][-1]["skipped"] == "setup failed: RuntimeError: capture failed"
    paths = {e["path"] for e in result["errors"]}  # the old tool ran the broken mode here, and crashed
    assert paths == {"expand", "single_frame", "first_frame_2d eager", "first_frame_2d eager, packed weights (a copy)"}


def test_a_call_cut_short_keeps_the_json_of_what_it_measured(tool, tmp_path, monkeypatch):
    out = tmp_path / "speed.json"
    measure = tool.measure_resolution
    seen = []

    def cut_at_the_second(vae, width, height, args, *rest):
        if seen:
            seen.append(json.loads(out.read_text()))  # the old tool wrote its JSON only at the end
            raise KeyboardInterrupt  # what timeout's SIGTERM ends in, as far as the JSON is concerned
        seen.append(None)
        return measure(vae, width, height, args, *rest)

    monkeypatch.setattr(tool, "measure_resolution", cut_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        tool.main(argv(out))
    kept = json.loads(out.read_text())
    assert kept == seen[1] and kept["complete"] is False
    (first,) = kept["results"]
    assert (first["width"], first["height"]) == (48, 32) and first["errors"]
    assert not out.with_name(out.name + ".tmp").exists()  # replaced by a rename, never half-written


def test_the_timings_are_saved_before_the_error_check(tool, tmp_path, monkeypatch):
    out = tmp_path / "speed.json"

    def cut(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tool, "oracle_errors", cut)
    with pytest.raises(KeyboardInterrupt):
        tool.main(argv(out, "48x32"))
    (result,) = json.loads(out.read_text())["results"]
    assert result["errors"] is None and all(len(v["samples_ms"]) == 2 for v in result["variants"])
