"""A strategy is one registry entry (bench.core.strategies): its flags, its revert and its speedup check follow."""

import dataclasses

import pytest

from bench.cli import options as cli_options
from bench.cli.options import gate_config, parse_args, run_controls
from bench.core import strategies
from bench.core.records import CaseSpec
from bench.gate import rules as gate
from bench.measure.controls import RunControls
from cosmos3 import diffusers_omni
from cosmos3.errors import InputError
from cosmos3.stages import ENCODE_STRATEGIES


@pytest.mark.parametrize("strategy", strategies.STRATEGIES, ids=lambda s: s.name)
def test_each_strategy_names_labels_the_implementations_run(strategy):
    assert strategy.name in ENCODE_STRATEGIES
    assert set(strategy.replaces) <= {*ENCODE_STRATEGIES, diffusers_omni.SHIPPED}
    assert strategy.name not in strategy.replaces


@pytest.mark.parametrize("strategy", strategies.STRATEGIES, ids=lambda s: s.name)
def test_each_strategy_gets_its_flags_from_its_entry(strategy):
    args = parse_args(["run", f"--{strategy.revert.replace('_', '-')}",
                           f"--{strategy.speedup.replace('_', '-')}", "7.5"])
    assert run_controls(args).reverted == (strategy.name,)
    config = gate_config(args)
    assert config.min_speedups[strategy.name] == 7.5
    others = {s.name: s.default_min_speedup for s in strategies.STRATEGIES if s is not strategy}
    assert {k: v for k, v in config.min_speedups.items() if k != strategy.name} == others


@pytest.mark.parametrize("strategy", strategies.STRATEGIES, ids=lambda s: s.name)
def test_a_reverted_strategy_runs_what_it_replaced_and_says_so(strategy):
    controls = RunControls(reverted=(strategy.name,))
    assert controls.strategy_for(strategy.name) == strategy.reverted_to("expand")
    assert controls.strategy_for(strategy.name) != strategy.name
    assert controls.active == (strategy.reverted_note,)
    assert RunControls().strategy_for(strategy.name) == strategy.name  # the control is what moves it


@pytest.mark.parametrize("strategy", strategies.STRATEGIES, ids=lambda s: s.name)
def test_each_strategy_is_gated_against_each_path_it_replaced(strategy):
    pairs = [p for p in gate.strategy_pairs(gate.GateConfig(min_speedups={strategy.name: 3.0}))
             if p.new == strategy.name]
    assert [(p.old, p.min_factor, p.min_frames, p.cuda_only, p.resolutions) for p in pairs] == [
        (old, 3.0, strategy.min_frames, strategy.cuda_only, strategy.resolutions) for old in strategy.replaces]


def test_a_new_strategy_entry_is_all_the_registry_needs(monkeypatch):
    """Negative control for the tests above: an entry the registry gains shows up in every reader."""
    extra = dataclasses.replace(strategies.SINGLE_FRAME, name="first_frame_2d", replaces=("expand",),
                                revert="revert_extra", speedup="min_speedup_extra", default_min_speedup=4.0)
    monkeypatch.setattr(strategies, "STRATEGIES", (strategies.SINGLE_FRAME, extra))
    monkeypatch.setattr(gate, "STRATEGIES", (strategies.SINGLE_FRAME, extra))
    monkeypatch.setattr(cli_options, "STRATEGIES", (strategies.SINGLE_FRAME, extra))
    args = parse_args(["run", "--revert-extra", "--min-speedup-extra", "5"])
    assert run_controls(args).reverted == ("first_frame_2d",)
    assert gate_config(args).min_speedups == {"single_frame": 2.0, "first_frame_2d": 5.0}
    assert ("first_frame_2d", "expand") in {(p.new, p.old) for p in gate.strategy_pairs(gate_config(args))}


def test_a_revert_must_name_a_strategy_and_apply_to_a_case():
    with pytest.raises(InputError, match=r"^reverted: must name strategies among single_frame, first_frame_2d "):
        RunControls(reverted=("expand",))
    spec = CaseSpec("latent_prep", 64, 48, 9, "expand")
    with pytest.raises(InputError, match=r"^revert_single_frame: needs a single_frame case among the 1 cases"):
        RunControls(reverted=("single_frame",)).check_applies([spec])
