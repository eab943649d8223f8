"""The compare coordinator <-> worker messages: exact wire format and every rule's exact message."""

from __future__ import annotations

import json

import pytest

from bench.compare import protocol
from bench.compare.protocol import REPLIES, REQUESTS, Bye, Round, RoundDone, Start, decode_message, encode_message
from bench.core.records import CaseResult, CaseSpec
from bench.measure.controls import RunControls
from cosmos3.errors import InputError


def test_a_message_is_one_line_of_plain_json():
    assert encode_message(Round("x")) == '{"type": "Round", "body": {"case": "x"}}\n'
    assert encode_message(Bye(7)) == '{"type": "Bye", "body": {"pid": 7}}\n'


def test_only_messages_are_encoded():
    with pytest.raises(TypeError) as err:
        encode_message(3)
    assert str(err.value) == "int is not a compare message"


def test_a_non_finite_number_never_goes_on_the_wire():
    with pytest.raises(ValueError, match="not JSON compliant"):
        encode_message(RoundDone("x", float("nan")))


def test_a_side_is_base_or_head():
    with pytest.raises(InputError) as err:
        Start("left", "/repo", "tiny")
    assert str(err.value) == "side: must be one of ['base', 'head'] (got 'left')"
    assert Start("base", "/repo", "tiny").side == "base"


def _error(line: str, known=REQUESTS) -> str:
    with pytest.raises(InputError) as err:
        decode_message(line, known, source="worker[head]")
    return str(err.value)


def test_every_decoding_rule_names_the_source_and_the_line():
    assert _error("Loading weights...") == (
        "worker[head]: must send one JSON message per line (Expecting value: line 1 column 1 (char 0)) "
        "(got 'Loading weights...')")
    long = "x" * 300
    assert _error(long).endswith(f"char 0)) (got '{'x' * 200}')")  # the first 200 characters
    padded = json.dumps({"type": "Round", "pad": "y" * 300})
    assert _error(padded) == f"worker[head]: must send {{'type', 'body'}} objects (got {padded[:200]!r})"
    assert _error("[1, 2]") == "worker[head]: must send {'type', 'body'} objects (got '[1, 2]')"
    assert _error('{"type": "Round"}') == "worker[head]: must send {'type', 'body'} objects (got '{\"type\": \"Round\"}')"
    assert _error('{"type": "Round", "body": {}, "x": 1}').startswith("worker[head]: must send {'type', 'body'}")
    assert _error(json.dumps({"type": ["Round"], "body": {}})) == (
        "worker[head].type: must be one of ['Finish', 'Prepare', 'Quit', 'Round', 'Start'] (got ['Round'])")
    assert _error(json.dumps({"type": "Bye", "body": {"pid": 1}})) == (
        "worker[head].type: must be one of ['Finish', 'Prepare', 'Quit', 'Round', 'Start'] (got 'Bye')")
    assert _error(json.dumps({"type": "Round", "body": {"case": 1}})) == (
        "worker[head].Round.case: must be a string (got 1)")
    assert _error(json.dumps({"type": "Round", "body": {"case": "x"}}), REPLIES) == (
        "worker[head].type: must be one of ['Bye', 'Finished', 'Prepared', 'Ready', 'RoundDone', 'Unavailable'] "
        "(got 'Round')")


def test_a_known_message_decodes_to_its_record():
    assert decode_message('{"type": "Round", "body": {"case": "x"}}', REQUESTS, source="s") == Round("x")
    assert decode_message(' {"type": "Bye", "body": {"pid": 2}}\n', REPLIES, source="s") == Bye(2)



def test_every_message_round_trips(make_env):
    spec = CaseSpec("latent_prep", 64, 48, 9, "single_frame")
    messages = [
        Start("head", "/repo", "tiny", controls=RunControls(slowdowns={"latent_prep[*]": 0.5})),
        protocol.Prepare(spec, 2), Round(spec.name), protocol.Finish(spec.name), protocol.Quit(),
        protocol.Ready("base", 1, "/t", "/t/cosmos3/__init__.py", "/h/bench/__init__.py", make_env(), (spec,)),
        protocol.Prepared(spec.name, (1.0, 2.0)), protocol.Unavailable(spec.name, "boom"), RoundDone(spec.name, 1.5),
        protocol.Finished(CaseResult(spec, (1.0, 2.0))), Bye(7),
    ]
    for message in messages:
        line = encode_message(message)
        assert line.endswith("\n") and line.count("\n") == 1
        known = REQUESTS if type(message).__name__ in REQUESTS else REPLIES
        assert decode_message(line, known, source="test") == message


def test_a_key_on_one_side_only_is_an_error():
    line = json.dumps({"type": "Round", "body": {"case": "x", "extra": 1}})
    with pytest.raises(InputError, match=r"test\.Round\.extra: is not a field of Round"):
        decode_message(line, REQUESTS, source="test")
    with pytest.raises(InputError, match=r"test\.Round\.case: is required"):
        decode_message(json.dumps({"type": "Round", "body": {}}), REQUESTS, source="test")
    with pytest.raises(InputError, match="must be one of"):  # a reply where a request is due
        decode_message(encode_message(Bye(1)), REQUESTS, source="test")
    with pytest.raises(InputError, match="one JSON message per line"):
        decode_message("Loading weights...", REPLIES, source="test")
    with pytest.raises(InputError, match="must be a number"):
        decode_message(json.dumps({"type": "RoundDone", "body": {"case": "x", "ms": "1"}}), REPLIES, source="test")
