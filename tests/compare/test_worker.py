"""bench.compare.worker, in process: one side of a compare answers the coordinator's requests in order."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from bench.compare.protocol import REPLIES, Finish, Prepare, Quit, Round, Start, decode_message, encode_message
from bench.compare.worker import ProtocolError, serve
from bench.core.records import CaseSpec
from bench.measure.controls import RunControls
from tests.repo import REPO


def test_the_worker_answers_in_process(tmp_path, monkeypatch):
    """Start, a case that cannot be built here (Unavailable, the worker goes on), a measured case, Quit."""
    monkeypatch.chdir(tmp_path)  # the worker's scratch folder goes into its working folder
    good = CaseSpec("latent_prep", 64, 48, 9, "single_frame")
    bogus = CaseSpec("no_such_kind", 64, 48, 9)
    requests = [Start("head", str(REPO), "tiny", controls=RunControls(slowdowns={good.name: 0.5})),
                Prepare(bogus, 1), Prepare(good, 1), Round(good.name), Round(good.name), Finish(good.name), Quit()]
    out = io.StringIO()
    assert serve(io.StringIO("".join(encode_message(r) for r in requests)), out) == 0
    replies = [decode_message(line, REPLIES, source="worker") for line in out.getvalue().splitlines()]
    assert [type(r).__name__ for r in replies] == ["Ready", "Unavailable", "Prepared", "RoundDone", "RoundDone",
                                                   "Finished", "Bye"]
    ready, unavailable, _, _, _, finished, _ = replies
    assert Path(ready.cosmos3_file).is_relative_to(REPO) and good in ready.cases
    assert unavailable.error.startswith("InputError: case.benchmark: has no workload")
    assert finished.result.rounds == 2 and finished.result.injected == ("slowdown 0.5",)
    assert not list(tmp_path.iterdir())  # the scratch folder is gone


def test_the_worker_refuses_requests_out_of_order():
    out = io.StringIO()
    with pytest.raises(ProtocolError, match="Round before Start"):
        serve(io.StringIO(encode_message(Round("x"))), out)
