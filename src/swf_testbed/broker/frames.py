"""STOMP frames: an incremental parser and a serializer (STOMP 1.0, 1.1 and 1.2).

What the parser does, per the specifications:

* a frame is ``COMMAND EOL (header EOL)* EOL body NUL``; EOL is ``\\n`` or
  ``\\r\\n`` (accepted for every version: lenient on input);
* EOLs between frames are heart-beats and are skipped;
* header names and values are UTF-8; on 1.1 and 1.2 they are unescaped
  (``\\n``, ``\\c``, ``\\\\``, and ``\\r`` on 1.2 — an undefined escape is a
  fatal error); 1.0 has no escaping, and CONNECT/STOMP/CONNECTED frames are
  never escaped;
* a repeated header keeps its first value;
* with ``content-length`` the body is exactly that many bytes (they may
  contain NUL) and must be followed by a NUL; without it the body ends at
  the first NUL;
* bodies are bytes and are never decoded.

Limits (:class:`Limits`) bound what one connection can make the broker hold:
the body size, the size of the command+header block, and the number of
headers. Anything malformed or too big raises :class:`FrameError`; the
caller answers with an ERROR frame and closes that connection.

The parser works on a ``bytearray`` with ``find``/regex searches (no loop
per byte), remembers how far it has already searched so a frame arriving in
many small pieces costs linear time, and is fed with :meth:`FrameParser.feed`
and drained one frame at a time with :meth:`FrameParser.next_frame` (so the
caller can switch the protocol version after CONNECT, before the next frame
is parsed).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = [
    "CLIENT_COMMANDS",
    "SERVER_COMMANDS",
    "SUPPORTED_VERSIONS",
    "Frame",
    "FrameError",
    "FrameParser",
    "Limits",
    "ProtocolError",
    "encode_frame",
    "escape",
    "unescape",
]

SUPPORTED_VERSIONS = ("1.0", "1.1", "1.2")

CLIENT_COMMANDS = frozenset(
    {
        "CONNECT",
        "STOMP",
        "SEND",
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "ACK",
        "NACK",
        "BEGIN",
        "COMMIT",
        "ABORT",
        "DISCONNECT",
    }
)
SERVER_COMMANDS = frozenset({"CONNECTED", "MESSAGE", "RECEIPT", "ERROR"})

# Frames whose headers are never escaped (STOMP 1.1/1.2).
_UNESCAPED_COMMANDS = frozenset({"CONNECT", "STOMP", "CONNECTED"})

_MAX_COMMAND_LINE = 64

DEFAULT_MAX_BODY_SIZE = 16 * 1024 * 1024
DEFAULT_MAX_HEADER_SIZE = 64 * 1024
DEFAULT_MAX_HEADERS = 1000
_HEADER_END = re.compile(rb"\n\r?\n")
_ESCAPE_SEQ = re.compile(r"\\(.?)", re.DOTALL)
_UNESCAPE_11 = {"n": "\n", "c": ":", "\\": "\\"}
_UNESCAPE_12 = {"n": "\n", "c": ":", "\\": "\\", "r": "\r"}


class FrameError(Exception):
    """A frame that cannot be accepted: malformed, or over a limit.

    ``message`` is the short text for the ERROR frame's ``message`` header,
    ``detail`` the longer explanation for its body.
    """

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail or message


class ProtocolError(Exception):
    """A frame the broker refuses: answered with ERROR, then the connection closes."""

    def __init__(
        self, message: str, detail: str = "", headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail or message
        self.headers = headers or {}


@dataclass(slots=True)
class Limits:
    """What one frame may be."""

    max_body_size: int = DEFAULT_MAX_BODY_SIZE
    """Largest body accepted (bytes). Default 16 MiB."""
    max_header_size: int = DEFAULT_MAX_HEADER_SIZE
    """Largest command line + header block (bytes, encoded). Default 64 KiB."""
    max_headers: int = DEFAULT_MAX_HEADERS
    """Most header lines in one frame."""

    def __post_init__(self) -> None:
        for name in ("max_body_size", "max_header_size", "max_headers"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive")


@dataclass(slots=True)
class Frame:
    """One STOMP frame. ``headers`` keeps the first value of a repeated header."""

    command: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def __repr__(self) -> str:
        return f"Frame({self.command!r}, {self.headers!r}, <{len(self.body)} bytes>)"


# --------------------------------------------------------------------------- escaping


def escape(value: str, version: str) -> str:
    """Escape a header name or value for ``version``.

    1.1: backslash, LF and colon; 1.2 also CR. 1.0 has no escaping: a LF or
    CR there would break the frame, so it is replaced by a space.
    """
    if version == "1.0":
        if "\n" in value or "\r" in value:
            return value.replace("\r", " ").replace("\n", " ")
        return value
    if "\\" in value:
        value = value.replace("\\", "\\\\")
    if "\n" in value:
        value = value.replace("\n", "\\n")
    if ":" in value:
        value = value.replace(":", "\\c")
    if version != "1.1" and "\r" in value:
        value = value.replace("\r", "\\r")
    return value


def unescape(value: str, version: str) -> str:
    """Undo :func:`escape`; an undefined escape sequence raises :class:`FrameError`."""
    if version == "1.0" or "\\" not in value:
        return value
    table = _UNESCAPE_11 if version == "1.1" else _UNESCAPE_12

    def repl(m: re.Match[str]) -> str:
        ch = m.group(1)
        try:
            return table[ch]
        except KeyError:
            raise FrameError(
                "Invalid header escape",
                f"undefined escape sequence {m.group(0)!r} in header {value!r} (STOMP {version})",
            ) from None

    return _ESCAPE_SEQ.sub(repl, value)


# --------------------------------------------------------------------------- serializer


def encode_frame(
    command: str,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    version: str = "1.2",
    *,
    content_length: bool = True,
) -> bytes:
    """Serialize one frame.

    Headers are escaped for ``version`` (never on CONNECT/STOMP/CONNECTED).
    A ``content-length`` header is added when ``content_length`` is true, the
    body is not empty and the caller did not give one.
    """
    items = headers.items() if isinstance(headers, Mapping) else headers
    esc = command not in _UNESCAPED_COMMANDS
    lines = [command]
    seen_length = False
    for k, v in items:
        k = str(k)
        v = str(v)
        if k == "content-length":
            seen_length = True
        if esc:
            k = escape(k, version)
            v = escape(v, version)
        lines.append(f"{k}:{v}")
    if content_length and body and not seen_length:
        lines.append(f"content-length:{len(body)}")
    lines.append("")
    lines.append("")
    return "\n".join(lines).encode("utf-8") + bytes(body) + b"\x00"


# --------------------------------------------------------------------------- parser


class FrameParser:
    """Incremental STOMP frame parser.

    ``commands`` is the set of acceptable commands (client commands for a
    broker, server commands for a client); anything else is a
    :class:`FrameError`. ``version`` may be changed between frames.
    """

    __slots__ = ("_buf", "_pending", "_pos", "_scan", "commands", "limits", "version")

    def __init__(
        self,
        limits: Limits | None = None,
        version: str = "1.0",
        commands: Iterable[str] = CLIENT_COMMANDS,
    ) -> None:
        self.limits = limits or Limits()
        self.version = version
        self.commands = frozenset(commands)
        self._buf = bytearray()
        self._pos = 0  # start of the next unparsed frame in _buf
        self._scan = 0  # where the search for the header end / NUL resumes
        # (command, headers, body offset from frame start, content-length or None)
        self._pending: tuple[str, dict[str, str], int, int | None] | None = None

    def feed(self, data: bytes) -> None:
        """Add received bytes; then call :meth:`next_frame` until it returns None."""
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as frames (a partial frame, or heart-beats)."""
        return len(self._buf) - self._pos

    @property
    def in_frame(self) -> bool:
        """True when a partial frame (not just heart-beat EOLs) is buffered."""
        buf = self._buf
        return self._pending is not None or any(
            b not in (10, 13) for b in buf[self._pos : self._pos + 64]
        )

    def _compact(self) -> None:
        pos = self._pos
        if pos:
            del self._buf[:pos]
            self._scan = max(0, self._scan - pos)
            self._pos = 0

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None when more bytes are needed.

        Raises :class:`FrameError` on a malformed or oversized frame; the
        parser is then unusable (the connection is to be closed).
        """
        buf = self._buf
        n = len(buf)
        pos = self._pos
        limits = self.limits

        if self._pending is None:
            # Heart-beats: EOLs between frames.
            while pos < n and buf[pos] in (10, 13):
                pos += 1
            self._pos = pos
            if pos >= n:
                self._buf.clear()
                self._pos = 0
                self._scan = 0
                return None
            m = _HEADER_END.search(buf, max(pos, self._scan - 2))
            if m is None:
                self._check_incomplete_header(pos, n)
                self._scan = n
                self._compact()
                return None
            head_end = m.start()
            body_start = m.end()
            if head_end - pos > limits.max_header_size:
                raise FrameError(
                    "Header too large",
                    f"the command line and headers take {head_end - pos} bytes; "
                    f"the limit is {limits.max_header_size}",
                )
            command, headers = self._parse_head(buf, pos, head_end)
            length = self._content_length(headers)
            self._pending = (command, headers, body_start - pos, length)
            self._scan = body_start
        command, headers, body_off, length = self._pending
        body_start = pos + body_off

        if length is not None:
            end = body_start + length
            if n <= end:
                self._compact()
                return None
            if buf[end] != 0:
                raise FrameError(
                    "Frame not terminated",
                    f"content-length is {length} but the byte after the body is "
                    f"{bytes(buf[end : end + 1])!r}, not NUL",
                )
            body = bytes(buf[body_start:end])
        else:
            end = buf.find(b"\x00", max(body_start, self._scan))
            if end < 0:
                if n - body_start > limits.max_body_size:
                    raise FrameError(
                        "Frame too large",
                        f"no NUL terminator within {limits.max_body_size} bytes of body "
                        f"(the maximum body size)",
                    )
                self._scan = n
                self._compact()
                return None
            body = bytes(buf[body_start:end])
        self._pending = None
        self._pos = end + 1
        self._scan = end + 1
        if self._pos >= n:
            buf.clear()
            self._pos = 0
            self._scan = 0
        elif self._pos > 65536:
            self._compact()
        return Frame(command, headers, body)

    # -- helpers

    def _check_incomplete_header(self, pos: int, n: int) -> None:
        """Fail early on garbage: a bad command line or a header block over the limits."""
        buf = self._buf
        nl = buf.find(b"\n", pos, min(n, pos + _MAX_COMMAND_LINE + 2))
        if nl < 0:
            if n - pos > _MAX_COMMAND_LINE:
                raise FrameError(
                    "Invalid frame",
                    f"no command line within {_MAX_COMMAND_LINE} bytes: "
                    f"{bytes(buf[pos : pos + 32])!r}...",
                )
        else:
            try:
                line = buf[pos:nl].decode("ascii")
            except UnicodeDecodeError:
                raise FrameError(
                    "Invalid frame", f"command line is not ASCII: {bytes(buf[pos:nl])[:32]!r}"
                ) from None
            self._command(line)
        if n - pos > self.limits.max_header_size + 4:
            raise FrameError(
                "Header too large",
                f"no end of headers within {self.limits.max_header_size} bytes "
                f"(the maximum header size)",
            )
        if buf.count(b"\n", pos, n) > self.limits.max_headers + 1:
            raise FrameError(
                "Too many headers",
                f"more than {self.limits.max_headers} header lines (the maximum)",
            )

    def _command(self, line: str) -> str:
        command = line.removesuffix("\r")
        if command not in self.commands:
            shown = command[:32] if command[:32].isprintable() else repr(command[:32])[1:-1]
            raise FrameError(
                f"Unknown STOMP action: {shown}",
                f"unknown command {command[:64]!r}; expected one of "
                f"{', '.join(sorted(self.commands))}",
            )
        return command

    def _parse_head(self, buf: bytearray, start: int, end: int) -> tuple[str, dict[str, str]]:
        try:
            text = buf[start:end].decode("utf-8")
        except UnicodeDecodeError as e:
            raise FrameError("Invalid frame", f"headers are not valid UTF-8: {e}") from None
        lines = text.split("\n")
        if len(lines) - 1 > self.limits.max_headers:
            raise FrameError(
                "Too many headers",
                f"{len(lines) - 1} headers; the limit is {self.limits.max_headers}",
            )
        command = self._command(lines[0])
        version = self.version
        unesc = version != "1.0" and command not in _UNESCAPED_COMMANDS
        headers: dict[str, str] = {}
        for line in lines[1:]:
            line = line.removesuffix("\r")
            name, sep, value = line.partition(":")
            if not sep or not name:
                raise FrameError(
                    "Invalid header", f"malformed header line {line[:200]!r} in {command} frame"
                )
            if unesc:
                if "\\" in name:
                    name = unescape(name, version)
                if "\\" in value:
                    value = unescape(value, version)
            if name not in headers:
                headers[name] = value
        return command, headers

    def _content_length(self, headers: dict[str, str]) -> int | None:
        raw = headers.get("content-length")
        if raw is None:
            return None
        text = raw.strip()
        if not text.isdigit() or not text.isascii():
            raise FrameError(
                "Invalid content-length",
                f"content-length {raw[:64]!r} is not a non-negative integer",
            )
        length = int(text)
        if length > self.limits.max_body_size:
            raise FrameError(
                "Frame too large",
                f"content-length {length} exceeds the maximum body size "
                f"{self.limits.max_body_size}",
            )
        return length
