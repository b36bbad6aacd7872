"""The STOMP frame parser and serializer, and the selector compiler (pure functions, no sockets)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from swf_testbed.broker.frames import (
    CLIENT_COMMANDS,
    SERVER_COMMANDS,
    Frame,
    FrameError,
    FrameParser,
    Limits,
    encode_frame,
    escape,
    unescape,
)
from swf_testbed.broker.selectors import SelectorError, compile_selector


def parse_all(
    data: bytes,
    version: str = "1.2",
    limits: Limits | None = None,
    commands: frozenset[str] = CLIENT_COMMANDS,
) -> list[Frame]:
    parser = FrameParser(limits, version, commands)
    parser.feed(data)
    out = []
    while (frame := parser.next_frame()) is not None:
        out.append(frame)
    return out


def parse_one(data: bytes, version: str = "1.2", **kwargs: Any) -> Frame:
    frames = parse_all(data, version, **kwargs)
    assert len(frames) == 1, frames
    return frames[0]


# --------------------------------------------------------------------------- escaping

SPECIAL = "a:b\nc\\d\re"


def test_escape_per_version() -> None:
    assert escape(SPECIAL, "1.2") == "a\\cb\\nc\\\\d\\re"
    assert escape(SPECIAL, "1.1") == "a\\cb\\nc\\\\d\re"  # 1.1 has no \r escape
    # 1.0 has no escaping at all; a line break would end the header, so it becomes a space
    assert escape("a:b\\c", "1.0") == "a:b\\c"
    assert escape("a\nb\rc", "1.0") == "a b c"


def test_unescape_per_version() -> None:
    assert unescape("a\\cb\\nc\\\\d\\re", "1.2") == SPECIAL
    assert unescape("a\\cb\\nc\\\\d", "1.1") == "a:b\nc\\d"
    assert unescape("a\\cb\\n", "1.0") == "a\\cb\\n"  # 1.0: taken literally
    with pytest.raises(FrameError):
        unescape("a\\rb", "1.1")  # \r is not a 1.1 escape
    for bad in ("a\\tb", "trailing\\", "\\x41"):
        with pytest.raises(FrameError):
            unescape(bad, "1.2")


def test_escape_round_trip_random_strings() -> None:
    rng = random.Random(42)
    alphabet = "ab:\\\n\r\x00é東 c"
    for _ in range(500):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 20)))
        assert unescape(escape(s, "1.2"), "1.2") == s
        if "\r" not in s:
            assert unescape(escape(s, "1.1"), "1.1") == s


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_headers_round_trip_through_a_frame(version: str) -> None:
    headers = {
        "destination": "/queue/a",
        "x:colon": "v:1:2",
        "x-nl": "one\ntwo",
        "x-bs": "C:\\dir\\",
        "x-uni": "Zürich – 東京",
        "x-esc-lookalike": "\\n\\c",
    }
    if version == "1.2":
        headers["x-cr"] = "a\rb"
    data = encode_frame("SEND", headers, b"body", version)
    frame = parse_one(data, version)
    assert frame.command == "SEND"
    assert frame.body == b"body"
    assert {k: v for k, v in frame.headers.items() if k != "content-length"} == headers
    assert frame.headers["content-length"] == "4"


def test_version_10_frames_are_not_unescaped() -> None:
    frame = parse_one(b"SEND\ndestination:/queue/a\nx:a\\nb\\c\n\nhi\x00", "1.0")
    assert frame.headers["x"] == "a\\nb\\c"


def test_connect_and_connected_are_never_escaped() -> None:
    data = encode_frame("CONNECT", {"login": "us:er", "passcode": "p\\w"}, b"", "1.2")
    assert b"login:us:er\n" in data and b"passcode:p\\w\n" in data
    frame = parse_one(data, "1.2")
    assert frame.headers == {"login": "us:er", "passcode": "p\\w"}
    # ... also when the parser is already in 1.2 mode (an undefined "escape" is no error there)
    frame = parse_one(b"STOMP\naccept-version:1.2\npasscode:a\\tb\n\n\x00", "1.2")
    assert frame.headers["passcode"] == "a\\tb"
    connected = parse_one(
        b"CONNECTED\nversion:1.2\nsession:a\\cb\n\n\x00", "1.2", commands=SERVER_COMMANDS
    )
    assert connected.headers["session"] == "a\\cb"


def test_undefined_escape_is_a_frame_error() -> None:
    with pytest.raises(FrameError, match="escape"):
        parse_all(b"SEND\ndestination:/queue/a\nx:a\\tb\n\n\x00", "1.2")


# --------------------------------------------------------------------------- framing


def test_repeated_header_first_value_wins() -> None:
    frame = parse_one(
        b"SEND\ndestination:/queue/first\ndestination:/queue/second\nx:1\nx:2\n\n\x00"
    )
    assert frame.headers == {"destination": "/queue/first", "x": "1"}


def test_content_length_body_may_contain_nul() -> None:
    body = b"\x00a\x00\x00b\x00"
    data = b"SEND\ndestination:/queue/a\ncontent-length:6\n\n" + body + b"\x00"
    frame = parse_one(data)
    assert frame.body == body


def test_body_without_content_length_ends_at_first_nul() -> None:
    frames = parse_all(b"SEND\ndestination:/queue/a\n\nabc\x00def\x00")
    assert frames[0].body == b"abc"
    # what follows the NUL is the next frame: "def" is no command
    with pytest.raises(FrameError, match="Unknown STOMP action"):
        parse_all(b"SEND\ndestination:/queue/a\n\nabc\x00def\n\n\x00")


def test_crlf_line_endings_and_heartbeats_between_frames() -> None:
    data = (
        b"\r\n\n\r\nSEND\r\ndestination:/queue/a\r\nx:1\r\n\r\nbody\x00\r\n\n"
        b"SEND\r\ndestination:/queue/b\r\ncontent-length:2\r\n\r\n\r\n\x00\n"
    )
    frames = parse_all(data)
    assert [f.headers["destination"] for f in frames] == ["/queue/a", "/queue/b"]
    assert frames[0].headers["x"] == "1"
    assert frames[0].body == b"body"
    assert frames[1].body == b"\r\n"


def test_value_may_contain_colons_and_be_empty() -> None:
    frame = parse_one(b"SEND\ndestination:/queue/a\nurl:http://h:80/x\nempty:\n\n\x00", "1.0")
    assert frame.headers["url"] == "http://h:80/x"
    assert frame.headers["empty"] == ""


def test_byte_at_a_time_gives_the_same_frames() -> None:
    data = b"".join(
        [
            encode_frame(
                "SEND", {"destination": "/topic/t", "x": "a:b\nc"}, b"\x00binary\x00", "1.2"
            ),
            b"\n\r\n",
            b"SEND\ndestination:/queue/q\n\nno length\x00",
            encode_frame("DISCONNECT", {"receipt": "r1"}, b"", "1.2"),
        ]
    )
    whole = parse_all(data)
    parser = FrameParser(version="1.2")
    pieces = []
    for i in range(len(data)):
        parser.feed(data[i : i + 1])
        while (frame := parser.next_frame()) is not None:
            pieces.append(frame)
    assert pieces == whole
    assert [f.command for f in whole] == ["SEND", "SEND", "DISCONNECT"]
    assert whole[0].body == b"\x00binary\x00"
    assert whole[0].headers["x"] == "a:b\nc"
    assert parser.buffered == 0 and not parser.in_frame


def test_partial_frame_is_reported_as_in_frame() -> None:
    parser = FrameParser()
    parser.feed(b"\n\n")
    assert parser.next_frame() is None and not parser.in_frame
    parser.feed(b"SEND\ndestination:/queue/a\n\nhal")
    assert parser.next_frame() is None and parser.in_frame


def test_version_switch_between_frames() -> None:
    parser = FrameParser()
    parser.feed(b"CONNECT\naccept-version:1.2\n\n\x00SEND\ndestination:/queue/a\nx:a\\cb\n\n\x00")
    connect = parser.next_frame()
    assert connect is not None and connect.command == "CONNECT"
    parser.version = "1.2"
    send = parser.next_frame()
    assert send is not None and send.headers["x"] == "a:b"


def test_encode_frame_content_length_and_bytes() -> None:
    assert encode_frame("SEND", {"destination": "/q"}, b"") == b"SEND\ndestination:/q\n\n\x00"
    data = encode_frame("SEND", [("destination", "/q"), ("destination", "/ignored")], b"\x00\x01")
    assert data == b"SEND\ndestination:/q\ndestination:/ignored\ncontent-length:2\n\n\x00\x01\x00"
    data = encode_frame("MESSAGE", {"x": "é"}, b"ok", "1.2", content_length=False)
    assert data == "MESSAGE\nx:é\n\nok\x00".encode()


# ----------------------------------------------------------------------- malformed and oversized


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"HELLO\n\n\x00", "Unknown STOMP action"),
        (b"send\ndestination:/q\n\n\x00", "Unknown STOMP action"),
        (b"SEND\nno colon here\n\n\x00", "Invalid header"),
        (b"SEND\n:empty-name\n\n\x00", "Invalid header"),
        (b"SEND\ncontent-length:abc\n\n\x00", "content-length"),
        (b"SEND\ncontent-length:-1\n\n\x00", "content-length"),
        (b"SEND\ncontent-length:3\n\nabcd\x00", "not terminated"),
        (b"SEND\nx:\xff\xfe\n\n\x00", "Invalid frame"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) * 4, "Invalid frame"),
    ],
    ids=[
        "unknown-command",
        "lowercase-command",
        "no-colon",
        "empty-name",
        "bad-length",
        "negative-length",
        "no-nul-after-length",
        "not-utf8",
        "tls-hello",
    ],
)
def test_malformed_frames(data: bytes, match: str) -> None:
    with pytest.raises(FrameError, match=match) as info:
        parse_all(data)
    assert info.value.message and info.value.detail


def test_garbage_command_line_fails_before_the_headers_end() -> None:
    parser = FrameParser()
    parser.feed(b"GET / HTTP/1.1\r\nHost: x\r\n")  # no blank line yet
    with pytest.raises(FrameError, match="Unknown STOMP action"):
        parser.next_frame()


def test_oversized_content_length_fails_before_the_body_arrives() -> None:
    parser = FrameParser(Limits(max_body_size=1000))
    parser.feed(b"SEND\ndestination:/q\ncontent-length:1001\n\n")
    with pytest.raises(FrameError, match="too large"):
        parser.next_frame()
    # exactly the limit is fine
    frame = parse_one(
        b"SEND\ncontent-length:1000\n\n" + b"x" * 1000 + b"\x00", limits=Limits(max_body_size=1000)
    )
    assert len(frame.body) == 1000


def test_oversized_body_without_content_length() -> None:
    parser = FrameParser(Limits(max_body_size=1000))
    parser.feed(b"SEND\ndestination:/q\n\n")
    for _ in range(10):
        parser.feed(b"x" * 99)
        assert parser.next_frame() is None  # 990 bytes: still within the limit
    parser.feed(b"x" * 20)
    with pytest.raises(FrameError, match="too large"):
        parser.next_frame()


def test_header_size_limit() -> None:
    limits = Limits(max_header_size=1024)
    frame = parse_one(b"SEND\nx:" + b"a" * 900 + b"\n\n\x00", limits=limits)
    assert len(frame.headers["x"]) == 900
    with pytest.raises(FrameError, match="Header too large"):
        parse_all(b"SEND\nx:" + b"a" * 1100 + b"\n\n\x00", limits=limits)
    # also when the end of the headers has not arrived (a header that never ends)
    parser = FrameParser(limits)
    parser.feed(b"SEND\nx:" + b"a" * 2000)
    with pytest.raises(FrameError, match="Header too large"):
        parser.next_frame()


def test_header_count_limit() -> None:
    limits = Limits(max_headers=10)
    ok = b"SEND\n" + b"".join(b"h%d:v\n" % i for i in range(10)) + b"\n\x00"
    assert len(parse_one(ok, limits=limits).headers) == 10
    bomb = b"SEND\n" + b"".join(b"h%d:v\n" % i for i in range(11)) + b"\n\x00"
    with pytest.raises(FrameError, match="Too many headers"):
        parse_all(bomb, limits=limits)
    parser = FrameParser(limits)  # ... and while the header block is still arriving
    parser.feed(b"SEND\n" + b"h:v\n" * 50)
    with pytest.raises(FrameError, match="Too many headers"):
        parser.next_frame()


def test_default_limits() -> None:
    limits = Limits()
    assert limits.max_body_size == 16 * 1024 * 1024
    assert limits.max_header_size == 64 * 1024
    assert limits.max_headers == 1000
    with pytest.raises(ValueError):
        Limits(max_body_size=0)


# --------------------------------------------------------------------------- selectors


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("namespace = 'torre1'", True),
        ("namespace = 'other'", False),
        ("namespace <> 'other'", True),
        ("namespace = 'torre1' AND msg_type = 'stf_gen'", True),
        ("namespace = 'x' OR msg_type = 'stf_gen'", True),
        ("NOT (namespace = 'torre1')", False),
        ("msg_type IN ('run_imminent', 'stf_gen')", True),
        ("msg_type NOT IN ('stf_gen')", False),
        ("msg_type LIKE 'stf%'", True),
        ("msg_type LIKE 'stf\\_g%' ESCAPE '\\'", True),
        ("msg_type LIKE 's_f'", False),
        ("priority > 5", True),
        ("priority BETWEEN 1 AND 7", True),
        ("priority NOT BETWEEN 1 AND 7", False),
        ("priority + 1 = 8", True),
        ("priority * 2 >= 14.0", True),
        ("-priority < 0", True),
        ("missing IS NULL", True),
        ("namespace IS NOT NULL", True),
        ("missing = 'x'", False),
        ("NOT missing = 'x'", False),  # unknown stays unknown: not selected
        ("missing = 'x' OR namespace = 'torre1'", True),
        ("flag = TRUE", True),
        ("name = 'it''s'", True),
        ("namespace = 'torre1' and msg_type = 'stf_gen'", True),  # keywords in any case
    ],
)
def test_selector(selector: str, expected: bool) -> None:
    headers = {
        "namespace": "torre1",
        "msg_type": "stf_gen",
        "priority": "7",
        "flag": "true",
        "name": "it's",
    }
    assert compile_selector(selector)(headers) is expected


@pytest.mark.parametrize(
    "bad",
    [
        "namespace = ",
        "namespace == 'a'",
        "(a = 1",
        "a = 1 b",
        "a LIKE 1",
        "a IN ()",
        "a # 1",
        "'unterminated = 1",
    ],
)
def test_bad_selector(bad: str) -> None:
    with pytest.raises(SelectorError):
        compile_selector(bad)
