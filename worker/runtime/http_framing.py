"""HTTP/1.1 message framing for the per-request front port (`http_proxy`): where a head
ends, what it says about its body, and where a chunked body ends.

Only what relaying needs is parsed. The functions work on bytes as they arrive (one
`data_received` at a time), so that the relay never waits on a coroutine per read: the
request head is checked whole by one regular expression, answer heads are searched
rather than split into dicts, and a chunked body is scanned for its end without being
copied (`ChunkedScanner`).
"""

from __future__ import annotations

import re

#: An instance's answer head, or a chunk-size/trailer line, may not be longer than this.
HEAD_LIMIT = 64 * 1024

#: A request head as RFC 9112 has it: a request line, then `name: value` lines whose name is
#: a token right before the colon (no space: a server must reject that), then an empty line.
_REQUEST_HEAD = re.compile(
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) [^ \r\n]+ (HTTP/1\.[01])\r\n"
    rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\r\n]*\r\n)*\r\n\Z"
)


def request_head(head: bytes) -> tuple[bytes, bytes, bytes, dict[bytes, bytes]] | None:
    """(method, version, Connection, body framing fields) of a client's request head, or
    None for a head that is not well-formed HTTP/1.x (the connection is then closed).

    One regular expression checks the whole head and lookups search its lower-cased copy,
    instead of splitting every line in Python: this runs once per request. The framing
    fields (Content-Length, Transfer-Encoding, and Expect with either) are returned only
    when present; two
    Content-Length fields are refused (a body that two parties could frame differently).
    """
    match = _REQUEST_HEAD.match(head)
    if match is None:
        return None
    lower = head.lower()
    fields: dict[bytes, bytes] = {}
    # Lookups inline (not `field`): a function call each was a visible part of the cost.
    at = lower.find(b"\r\ncontent-length:")
    if at >= 0:
        if lower.find(b"\r\ncontent-length:", at + 17) >= 0:
            return None
        fields[b"content-length"] = lower[at + 17 : lower.find(b"\r\n", at + 17)].strip()
    at = lower.find(b"\r\ntransfer-encoding:")
    if at >= 0:
        fields[b"transfer-encoding"] = lower[at + 20 : lower.find(b"\r\n", at + 20)].strip()
    if fields and (at := lower.find(b"\r\nexpect:")) >= 0:
        fields[b"expect"] = lower[at + 9 : lower.find(b"\r\n", at + 9)].strip()
    at = lower.find(b"\r\nconnection:")
    connection = lower[at + 13 : lower.find(b"\r\n", at + 13)].strip() if at >= 0 else b""
    return match[1], match[2], connection, fields


def answer_head(head: bytes) -> tuple[int, bytes | None, bytes, bytes | None]:
    """(status, Content-Length, Connection, Transfer-Encoding) of an instance's answer head.

    Found by searching the lower-cased head rather than splitting every line: an answer
    passes here once per request, and only these fields decide how it is relayed. Values
    come back lower-cased and stripped; a status that is not a number is a 502.
    """
    lower = head.lower()
    if head[12:13] == b" " and head[9:12].isdigit():  # "HTTP/1.1 200 ", as nearly all are
        status = int(head[9:12])
    else:
        first = head[: head.find(b"\r\n")].split(b" ", 2)
        status = int(first[1]) if len(first) > 1 and first[1].isdigit() else 502
    at = lower.find(b"\r\ncontent-length:")
    length = lower[at + 17 : lower.find(b"\r\n", at + 17)].strip() if at >= 0 else None
    at = lower.find(b"\r\nconnection:")
    connection = lower[at + 13 : lower.find(b"\r\n", at + 13)].strip() if at >= 0 else b""
    at = lower.find(b"\r\ntransfer-encoding:")
    encoding = lower[at + 20 : lower.find(b"\r\n", at + 20)].strip() if at >= 0 else None
    return status, length, connection, encoding


class ChunkedScanner:
    """Finds where a chunked body ends, fed the bytes as they arrive.

    The relay forwards a chunked body as it is (sizes, data, trailers), so only its end
    matters: the scanner skips chunk data by count and parses the size and trailer lines,
    keeping a line cut between two reads until its end arrives.

    Raises:
        ValueError: a chunk size that is not hexadecimal, or a line over `HEAD_LIMIT`.
    """

    __slots__ = ("_left", "_line", "_trailers")

    def __init__(self) -> None:
        self._left = 0  # chunk data and its CRLF still to skip
        self._line = b""  # a size or trailer line cut by the end of a read
        self._trailers = False

    def feed(self, data: bytes | bytearray, at: int = 0) -> int:
        """Scan `data[at:]`: the index just past the body's end in `data`, or -1 when the
        body goes on past `data` (feed the next bytes then)."""
        end = len(data)
        while True:
            if self._left:
                take = min(self._left, end - at)
                at += take
                self._left -= take
                if self._left:
                    return -1
            if at >= end:
                return -1
            if self._line.endswith(b"\r") and data[at : at + 1] == b"\n":
                line, at = self._line[:-1], at + 1  # the CRLF itself was cut in two
            else:
                nl = data.find(b"\r\n", at)
                if nl < 0:
                    self._line += bytes(data[at:])
                    if len(self._line) > HEAD_LIMIT:
                        raise ValueError("chunk line too long")
                    return -1
                line, at = self._line + bytes(data[at:nl]), nl + 2
            self._line = b""
            if self._trailers:
                if not line:
                    return at
                continue
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size < 0:
                raise ValueError("negative chunk size")
            if size == 0:
                self._trailers = True
            else:
                self._left = size + 2
