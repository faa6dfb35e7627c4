"""The fast paths of the protocol module say exactly what the plain ones said.

``parse_client_message`` lets pydantic parse and validate JSON in one pass and falls back
to ``json.loads`` plus validation (which names the problem) only for what it refuses;
``ServerMessage.to_json`` writes the envelope by hand. Both are held here to the previous
implementations, written out as references: same messages accepted with the same values,
same violations, same text, byte for byte.
"""

from __future__ import annotations

import copy
import json
import random
import sys
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from audiohook.protocol import (
    _JSON_TYPE_NAMES,
    CLIENT_TYPES,
    EMPTY_PARAMETERS,
    MAX_JSON_DEPTH,
    MAX_TEXT_BYTES,
    ClosedParameters,
    DisconnectParameters,
    EmptyParameters,
    EventParameters,
    OpenedParameters,
    ReconnectParameters,
    ServerParameters,
    ServerType,
    Uuid,
    Violation,
    _client_message,
    _describe,
    _read_json,
    parse_client_message,
    server_message,
    validate_entities,
)

SESSION_ID = "5f020a60-a9cf-4a0a-add7-717401f04817"
ORG_ID = "d7934305-0972-4844-938e-9060eef73d05"
STEREO_PCMU = {"type": "audio", "format": "PCMU", "channels": ["external", "internal"], "rate": 8000}


def reference_parse(text: str | bytes) -> Any:
    """``parse_client_message`` without the one-pass path: the strict JSON reading, then validate_python."""
    size = len(text.encode("utf-8") if isinstance(text, str) else text)
    if size > MAX_TEXT_BYTES:
        return Violation(f"text message of {size} bytes exceeds the {MAX_TEXT_BYTES}-byte limit")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Violation(f"message is not valid JSON: {exc}")
    raw = _read_json(text)
    if isinstance(raw, Violation):
        return raw
    if not isinstance(raw, dict):
        return Violation(f"message is not a JSON object but a JSON {_JSON_TYPE_NAMES[type(raw)]}")
    seq = raw.get("seq") if type(raw.get("seq")) is int else None
    version = raw.get("version")
    if version != "2":
        return Violation(f"unsupported version {json.dumps(version)}; expected \"2\"", seq)
    message_type = raw.get("type")
    if message_type not in CLIENT_TYPES:
        return Violation(f"unknown message type {json.dumps(message_type)}", seq)
    try:
        return _client_message.validate_python(raw)
    except ValidationError as exc:
        return Violation(_describe(exc, message_type), seq)


def outcome(parse: Any, text: str | bytes) -> tuple[Any, ...]:
    """What a parse gave, comparable: the violation, the exception, or the message's type and
    every value with its Python type (repr tells 1 from 1.0 from True; NaN equals itself)."""
    try:
        result = parse(text)
    except Exception as error:  # noqa: BLE001 - the exception is part of the behaviour compared
        return ("raises", type(error).__name__, str(error))
    if isinstance(result, Violation):
        return ("violation", result.info, result.seq)
    return ("message", type(result).__name__, repr(result.model_dump()), repr(result.model_extra))


def client(type: str = "ping", parameters: Any = None, **fields: Any) -> dict[str, Any]:
    return {"version": "2", "id": SESSION_ID, "type": type, "seq": 2, "serverseq": 1, "position": "PT1.5S",
            "parameters": {} if parameters is None else parameters} | fields


def compact(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


PING = compact(client())
ERROR = compact(client("error", {"code": 400, "message": "m"}))


def extra(value: str) -> str:
    """The ping with one more top-level field, its JSON text given as is."""
    return PING[:-1] + ',"x":' + value + "}"


TRICKY: dict[str, str | bytes] = {
    # numbers
    "seq-float": PING.replace('"seq":2', '"seq":2.0'),
    "seq-exponent": PING.replace('"seq":2', '"seq":2e0'),
    "seq-string": PING.replace('"seq":2', '"seq":"2"'),
    "seq-true": PING.replace('"seq":2', '"seq":true'),
    "seq-negative-zero": PING.replace('"seq":2', '"seq":-0'),
    "seq-big": PING.replace('"seq":2', '"seq":' + "9" * 40),
    "seq-4300-digits": PING.replace('"seq":2', '"seq":' + "7" * 4300),
    "seq-4301-digits": PING.replace('"seq":2', '"seq":' + "7" * 4301),  # Python's int limit: raises
    "seq-NaN": PING.replace('"seq":2', '"seq":NaN'),
    "seq-leading-zero": PING.replace('"seq":2', '"seq":02'),
    "seq-plus": PING.replace('"seq":2', '"seq":+2'),
    "serverseq-float": PING.replace('"serverseq":1', '"serverseq":1.0'),
    "error-code-float": ERROR.replace('"code":400', '"code":400.0'),
    "error-code-exponent": ERROR.replace('"code":400', '"code":4e2'),
    "error-code-string": ERROR.replace('"code":400', '"code":"400"'),
    "error-code-true": ERROR.replace('"code":400', '"code":true'),
    "extra-NaN": extra("NaN"),
    "extra-Infinity": extra("Infinity"),
    "extra-minus-Infinity": extra("-Infinity"),
    "extra-overflowing-float": extra("1e400"),
    "extra-underflowing-float": extra("1e-400"),
    "extra-negative-zero": extra("-0.0"),
    "extra-long-fraction": extra("0.1000000000000000055511151231257827021181583404541015625"),
    "extra-big-int": extra("9" * 400),
    "extra-exponent-int": extra("1E2"),
    # duplicate keys: the last one wins
    "duplicate-type": PING[:-1] + ',"type":"paused"}',
    "duplicate-seq": PING[:-1] + ',"seq":3}',
    "duplicate-seq-bad-first": PING.replace('"seq":2', '"seq":"x"')[:-1] + ',"seq":3}',
    "duplicate-seq-bad-last": PING[:-1] + ',"seq":"x"}',
    "duplicate-version": PING[:-1] + ',"version":"3"}',
    "duplicate-version-bad-first": PING.replace('"version":"2"', '"version":"3"')[:-1] + ',"version":"2"}',
    "duplicate-parameter": PING.replace('"parameters":{}', '"parameters":{"rtt":"PT1S","rtt":"PT2S"}'),
    "duplicate-extra": PING[:-1] + ',"x":1,"x":2}',
    # strings
    "lone-high-surrogate-escape": extra('"\\ud800"'),
    "lone-low-surrogate-escape": extra('"\\udc00"'),
    "surrogate-pair-escape": extra('"\\ud83d\\ude00"'),
    "reversed-surrogate-pair-escape": extra('"\\ude00\\ud83d"'),
    "surrogate-escape-in-a-digit": compact(client("dtmf", {"digit": "5"})).replace('"5"', '"\\ud800"'),
    "escaped-key": PING.replace('"type"', '"t\\u0079pe"'),
    "escaped-type": PING.replace('"ping"', '"\\u0070ing"'),
    "raw-tab-in-a-string": extra('"a\tb"'),
    "raw-nul-in-a-string": extra('"a\x00b"'),
    "raw-del-in-a-string": extra('"a\x7fb"'),
    "escaped-nul": extra('"a\\u0000b"'),
    "bad-escape": extra('"\\x41"'),
    "short-escape": extra('"\\u12"'),
    "non-ascii-digits-in-position": PING.replace("PT1.5S", "PT\u0661S"),
    # shapes
    "extra-fields": extra('{"a":[1,2.5,null,true,"é"]}'),
    "parameters-null": PING.replace('"parameters":{}', '"parameters":null'),
    "array": "[1]", "null": "null", "number": "1", "string": '"ping"', "true": "true",
    "empty": "", "whitespace-only": " \t",
    "deep-nesting-900": extra("[" * 900 + "]" * 900),
    "deep-nesting-1000": extra("[" * 1000 + "]" * 1000),  # json's recursion limit: raises
    # around the text
    "json-whitespace": " \t\n\r" + PING + "\r\n",
    "form-feed-before": "\x0c" + PING,
    "form-feed-after": PING + "\x0c",
    "no-break-space-after": PING + "\u00a0",
    "bom-in-text": "\ufeff" + PING,
    "trailing-comma": PING[:-1] + ",}",
    "trailing-object": PING + "{}",
    "trailing-nul": PING + "\x00",
    "single-quotes": PING.replace('"', "'"),
    # bytes only
    "bom-in-bytes": b"\xef\xbb\xbf" + PING.encode(),
    "utf-16-le": PING.encode("utf-16-le"),
    "utf-16-with-bom": PING.encode("utf-16"),
    "utf-32": PING.encode("utf-32"),
    "invalid-utf8-in-a-string": extra('"\xff"').encode("latin-1"),
    "invalid-utf8-continuation": extra('"\x80"').encode("latin-1"),
    "overlong-utf8": extra('"\xc0\xaf"').encode("latin-1"),
    "utf8-encoded-surrogate": extra('"\xed\xa0\x80"').encode("latin-1"),
    "truncated-utf8": extra('"\xe2\x82"').encode("latin-1"),
    "invalid-utf8-in-a-key": PING.encode()[:-1] + b',"\xff":1}',
    "invalid-utf8-after": PING.encode() + b"\xff",
    "beyond-unicode": extra('"\xf4\x90\x80\x80"').encode("latin-1"),
    "highest-code-point": extra('"\xf4\x8f\xbf\xbf"').encode("latin-1"),
}


def as_given_and_as_the_other_type(text: str | bytes) -> list[str | bytes]:
    if isinstance(text, bytes):
        return [text]
    return [text, text.encode("utf-8")]


@pytest.mark.parametrize("name", list(TRICKY))
def test_one_pass_parsing_accepts_and_refuses_exactly_what_the_two_step_parse_did(name: str) -> None:
    for text in as_given_and_as_the_other_type(TRICKY[name]):
        assert outcome(parse_client_message, text) == outcome(reference_parse, text)


def test_tricky_inputs_cover_both_answers_and_none_raises() -> None:
    kinds = {outcome(parse_client_message, text)[0] for text in TRICKY.values()}
    assert kinds == {"message", "violation"}


@pytest.mark.parametrize(("text", "info", "seq"), [
    (TRICKY["seq-float"], "invalid ping message: seq: Input should be a valid integer", None),
    (TRICKY["seq-true"], "invalid ping message: seq: Input should be a valid integer", None),
    (TRICKY["serverseq-float"], "invalid ping message: serverseq: Input should be a valid integer", 2),
    (TRICKY["duplicate-version"], 'unsupported version "3"; expected "2"', 2),
    (TRICKY["raw-tab-in-a-string"], "message is not valid JSON: Invalid control character at: line 1 column 138 "
                                    "(char 137)", None),
    (TRICKY["bom-in-text"], "message is not valid JSON: Unexpected UTF-8 BOM (decode using utf-8-sig): line 1 "
                            "column 1 (char 0)", None),
    (TRICKY["invalid-utf8-in-a-string"], "message is not valid JSON: 'utf-8' codec can't decode byte 0xff in "
                                         "position 136: invalid start byte", None),
    (TRICKY["form-feed-after"], "message is not valid JSON: Extra data: line 1 column 132 (char 131)", None),
], ids=["seq-float", "seq-true", "serverseq-float", "duplicate-version", "raw-tab", "bom", "invalid-utf8",
        "form-feed"])
def test_refused_text_names_the_problem_exactly(text: str | bytes, info: str, seq: int | None) -> None:
    assert parse_client_message(text) == Violation(info, seq)


def test_the_last_of_duplicate_keys_wins_as_json_loads_has_it() -> None:
    message = parse_client_message(TRICKY["duplicate-type"])
    assert (message.type, message.seq) == ("paused", 2)  # type: ignore[union-attr]
    assert parse_client_message(TRICKY["duplicate-seq-bad-first"]).seq == 3  # type: ignore[union-attr]


NOT_JSON = "message is not valid JSON: "


@pytest.mark.parametrize(("name", "info"), [
    ("seq-NaN", "NaN is not a JSON value"),
    ("extra-NaN", "NaN is not a JSON value"),
    ("extra-Infinity", "Infinity is not a JSON value"),
    ("extra-minus-Infinity", "-Infinity is not a JSON value"),
    ("extra-overflowing-float", "a number is beyond the range of a double"),
    ("seq-4301-digits", f"a number has more than {sys.get_int_max_str_digits()} digits"),
    ("lone-high-surrogate-escape", "a string holds a lone surrogate escape, which is not Unicode text"),
    ("lone-low-surrogate-escape", "a string holds a lone surrogate escape, which is not Unicode text"),
    ("reversed-surrogate-pair-escape", "a string holds a lone surrogate escape, which is not Unicode text"),
    ("surrogate-escape-in-a-digit", "a string holds a lone surrogate escape, which is not Unicode text"),
])
def test_what_python_reads_but_json_does_not_allow_is_refused_as_invalid_json(name: str, info: str) -> None:
    for text in as_given_and_as_the_other_type(TRICKY[name]):
        assert parse_client_message(text) == Violation(NOT_JSON + info)


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH, 985, 20_000, 32_000])
def test_nesting_deeper_than_the_limit_is_refused_as_invalid_json(depth: int) -> None:
    # The top-level object is one level: the extra's arrays take it past the limit.
    for text in as_given_and_as_the_other_type(extra("[" * depth + "]" * depth)):
        assert parse_client_message(text) == Violation(NOT_JSON + f"it nests deeper than {MAX_JSON_DEPTH} levels")


def test_nesting_up_to_the_limit_is_read() -> None:
    depth = MAX_JSON_DEPTH - 1
    assert not isinstance(parse_client_message(extra("[" * depth + "]" * depth)), Violation)


@pytest.mark.parametrize(("text", "info"), [
    (PING.replace('"seq":2', '"seq":NaN,"seq":2'), "NaN is not a JSON value"),
    (PING.replace('"version":"2"', '"version":Infinity,"version":"2"'), "Infinity is not a JSON value"),
    (PING.replace('"id":', '"id":"\\ud800","id":'), "a string holds a lone surrogate escape, which is not Unicode text"),
    (extra('"\\ud800","x":1'), "a string holds a lone surrogate escape, which is not Unicode text"),
    (extra('1e400,"x":1'), "a number is beyond the range of a double"),
    (extra('["a",["\\udc00"]],"x":1'), "a string holds a lone surrogate escape, which is not Unicode text"),
], ids=["seq", "version", "id", "extra-string", "extra-number", "string-in-nested-list"])
def test_a_value_a_duplicate_key_drops_must_still_be_json(text: str, info: str) -> None:
    for given in as_given_and_as_the_other_type(text):
        assert parse_client_message(given) == Violation(NOT_JSON + info)


@pytest.mark.parametrize(("encoded", "info"), [
    (b"\xef\xbb\xbf" + PING.encode(), "Unexpected UTF-8 BOM (decode using utf-8-sig): line 1 column 1 (char 0)"),
    # ASCII plus NULs: valid UTF-8, but not this JSON
    (PING.encode("utf-16-le"), "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
    (PING.encode("utf-32"), "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"),
], ids=["bom", "utf-16", "utf-32"])
def test_bytes_are_read_as_utf8_only(encoded: bytes, info: str) -> None:
    assert parse_client_message(encoded) == Violation(NOT_JSON + info)


def test_a_text_holding_a_raw_lone_surrogate_is_refused_not_raised() -> None:
    assert parse_client_message(PING[:-1] + ',"x":"\ud800"}') == Violation(
        NOT_JSON + "a string holds a lone surrogate, which is not Unicode text")


@pytest.mark.parametrize(("field", "info"), [
    ("version", 'unsupported version "' + "\\u00e9" * 40 + '"...; expected "2"'),
    ("type", 'unknown message type "' + "\\u00e9" * 40 + '"...'),
])
def test_an_echoed_value_is_cut_to_forty_characters(field: str, info: str) -> None:
    text = PING.replace(f'"{field}":"{"2" if field == "version" else "ping"}"', f'"{field}":"' + "é" * 30_000 + '"')
    assert parse_client_message(text) == Violation(info, 2)


@pytest.mark.parametrize("name", ["surrogate-pair-escape", "extra-underflowing-float", "seq-4300-digits",
                                  "extra-big-int"])
def test_what_json_allows_at_its_edges_is_read(name: str) -> None:
    assert not isinstance(parse_client_message(TRICKY[name]), Violation)


def test_a_surrogate_pair_escape_is_read_as_its_character() -> None:
    message = parse_client_message(TRICKY["surrogate-pair-escape"].encode())
    assert message.model_extra == {"x": "\U0001f600"}  # type: ignore[union-attr]


def mutations(seed: int, count: int) -> list[str]:
    """Well-formed messages with one or two values replaced by values of another JSON type or
    given an extra field, a duplicate key now and then: what a fast parser is most tempted to
    read differently."""
    values: list[Any] = [0, 1, 2, -1, 1.0, -0.0, 2.5, True, False, "1", "", None, [], {}, [1], {"a": 1},
                         float("nan"), float("inf"), 10**20, 2**64, "PT1S", "PT1,5S", "\ud800", "é", "external",
                         "PCMU", 8000.0, "8000", 400, 400.0, SESSION_ID.upper(), " " + SESSION_ID, "2", "ping", "end"]
    messages = [
        client("open", {"organizationId": ORG_ID, "conversationId": SESSION_ID,
                        "participant": {"id": SESSION_ID, "ani": "", "aniName": "", "dnis": ""},
                        "media": [STEREO_PCMU], "language": "en-US", "supportedLanguages": True,
                        "continuedSessions": [{"id": SESSION_ID, "serverseq": 1, "clientseq": 2}],
                        "customConfig": {"a": [1.5, None]}}, seq=1, serverseq=0),
        client("ping", {"rtt": "PT0.05S"}), client("close", {"reason": "end"}), client("update", {"language": "de"}),
        client("resumed", {"start": "PT1S", "discarded": "PT0.2S"}), client("paused"),
        client("error", {"code": 429, "message": "slow", "retryAfter": "PT1S"}),
        client("dtmf", {"digit": "5", "duration": "PT0.1S"}), client("playback_started", {"x": [1, 2.5e-3]}),
    ]

    def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if isinstance(value, dict):
            return [p for key, item in value.items() for p in [(*prefix, key), *paths(item, (*prefix, key))]]
        if isinstance(value, list):
            return [p for index, item in enumerate(value) for p in [(*prefix, index), *paths(item, (*prefix, index))]]
        return []

    rnd = random.Random(seed)
    texts = []
    for _ in range(count):
        message = copy.deepcopy(rnd.choice(messages))
        for _ in range(rnd.randint(1, 2)):
            *parents, last = rnd.choice(paths(message))
            target = message
            for part in parents:
                target = target[part]
            if isinstance(target, dict) and rnd.random() < 0.5:
                target["x-" + str(last)] = copy.deepcopy(rnd.choice(values))  # an extra field: kept, not refused
            else:
                target[last] = copy.deepcopy(rnd.choice(values))
        text = json.dumps(message, ensure_ascii=rnd.random() < 0.5, separators=(",", ":"))
        if rnd.random() < 0.2:
            key = rnd.choice(list(message))
            text = text[:-1] + f",{json.dumps(key)}:{json.dumps(rnd.choice(values))}}}"
        texts.append(text)
    return texts


def test_one_pass_parsing_agrees_with_the_two_step_parse_on_mistyped_messages() -> None:
    kinds = []
    for text in mutations(seed=20261130, count=1500):
        for given in [text.encode("utf-8", "surrogatepass"), *([text] if text.isascii() else [])]:
            expected = outcome(reference_parse, given)
            assert outcome(parse_client_message, given) == expected, given
            kinds.append(expected[0])
    assert kinds.count("message") > 300 and kinds.count("violation") > 300


# --- server messages --------------------------------------------------------------------------


class ReferenceServerMessage(BaseModel):
    """``ServerMessage`` as a model, as it was serialised before ``to_json`` wrote the envelope."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    version: Literal["2"] = "2"
    type: ServerType
    seq: Annotated[int, Field(ge=1)]
    clientseq: Annotated[int, Field(ge=0)]
    id: Uuid
    parameters: ServerParameters


ENTITIES = validate_entities([
    {"type": "transcript", "data": {
        "id": "8c5b7c8e-2a0b-4c8f-9d6a-1f0e2d3c4b5a", "channelId": 1, "isFinal": False, "offset": "PT1.2S",
        "duration": "PT0.8S", "alternatives": [{"confidence": 0.1, "languages": ["de-DE"], "interpretations": [
            {"type": "display", "transcript": "Grüße aus Köln — „Zitat“ 😀", "tokens": [
                {"type": "word", "value": "Grüße", "confidence": 1e-7, "offset": "PT1.2S", "duration": "PT0.3S"}]}]}]}},
    {"type": "agentassist", "data": {"id": "a1", "utterances": [{
        "id": "u1", "position": "PT1S", "text": "日本語 \"quoted\" \\ back\nslash\t\u2028", "language": "ja-JP",
        "confidence": 0.3333333333333333, "channel": "internal", "isFinal": True}]}},
    {"type": "custom.thing", "data": {"float": 1e16, "small": 5e-324, "negative": -0.0, "int": 10**20,
                                      "null": None, "nan": float("nan"), "inf": float("-inf"), "ü": ["ß", 1.5]}},
])
assert isinstance(ENTITIES, list)

PARAMETERS: dict[str, ServerParameters] = {
    "empty": EMPTY_PARAMETERS,
    "another-empty": EmptyParameters(),
    "opened": OpenedParameters(media=[STEREO_PCMU | {"x-extra": None}], supportedLanguages=["de-DE", "fr-CA"]),
    "opened-start-paused": OpenedParameters(startPaused=True, media=[], discardTo="PT2.5S"),
    "closed-with-output": ClosedParameters(outputVariables={"ä": "ö", "n": None, "f": 0.1, "list": [1, "x"]}),
    "disconnect-completed": DisconnectParameters(reason="completed"),
    "disconnect-error-unicode": DisconnectParameters(
        reason="error", info="audio frame of 3201 bytes — „ü“ \"quoted\" \\ \x00\x1f\u2028 </script> 😀"),
    "reconnect": ReconnectParameters(info="server task stopping: continue on a new connection"),
    "reconnect-without-info": ReconnectParameters(),
    "event": EventParameters(entities=ENTITIES),
}


@pytest.mark.parametrize("type", ["opened", "closed", "pong", "updated", "pause", "resume", "event", "disconnect",
                                  "reconnect"])
@pytest.mark.parametrize("name", list(PARAMETERS))
def test_server_text_is_byte_for_byte_what_the_model_serialised(type: ServerType, name: str) -> None:
    parameters = PARAMETERS[name]
    for session_id, seq, clientseq in [(SESSION_ID, 1, 0), (SESSION_ID.upper(), 2**40, 2**40 - 1)]:
        text = server_message(type, session_id=session_id, seq=seq, clientseq=clientseq,
                              parameters=parameters).to_json()
        reference = ReferenceServerMessage(type=type, seq=seq, clientseq=clientseq, id=session_id,
                                           parameters=parameters).model_dump_json(exclude_none=True)
        assert text == reference


def test_server_text_keeps_non_ascii_as_utf8_in_the_documented_field_order() -> None:
    text = server_message("disconnect", session_id=SESSION_ID, seq=3, clientseq=2,
                          parameters=PARAMETERS["disconnect-error-unicode"]).to_json()
    assert text == (
        '{"version":"2","type":"disconnect","seq":3,"clientseq":2,"id":"5f020a60-a9cf-4a0a-add7-717401f04817",'
        '"parameters":{"reason":"error","info":"audio frame of 3201 bytes — „ü“ \\"quoted\\" \\\\ \\u0000\\u001f'
        '\u2028 </script> 😀"}}')
    event = json.loads(server_message("event", session_id=SESSION_ID, seq=4, clientseq=2,
                                      parameters=PARAMETERS["event"]).to_json())
    assert event["parameters"]["entities"][2]["data"] == {
        "float": 1e16, "small": 5e-324, "negative": -0.0, "int": 10**20, "null": None, "nan": None, "inf": None,
        "ü": ["ß", 1.5]}


@pytest.mark.parametrize("session_id", [
    '"' + "a" * 35,
    "x" * 36,
    "5f020a60-a9cf-4a0a-add7-717401f0481\\",
    "5f020a60a9cf-4a0a-add7-717401f04817-",
    "5f020a60-a9cf-4a0a-add7-717401f0481é",
    " 5f020a60-a9cf-4a0a-add7-717401f0481",
    SESSION_ID + "\n",
], ids=["quote", "letters", "backslash", "dashes-moved", "non-ascii", "space", "trailing-newline"])
def test_server_message_refuses_a_session_id_that_is_not_exactly_a_uuid(session_id: str) -> None:
    # The envelope is written as text: an id that is not a UUID (one from the upgrade's header,
    # named in a reply before any open) must never reach it, even if it has a UUID's length.
    with pytest.raises(ValueError, match="not a server message"):
        server_message("pong", session_id=session_id, seq=1, clientseq=1)
