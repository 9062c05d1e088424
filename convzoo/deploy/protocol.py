"""uvicorn's httptools protocol with the two limits it lacks: the size of a request head, and time.

uvicorn (0.54, httptools parser) buffers a request line + headers of any size (httptools joins a
header's pieces until it ends: a never-ending 100 MB header held the event loop and hundreds of MB),
and keeps a connection open forever while a client sends nothing, half a head, or half a body
(slowloris). Its only timer is timeout_keep_alive (5 s), armed once a response is complete.

This subclass, passed to uvicorn as `http=` (one worker or several), adds per connection:
- MAX_HEAD_BYTES: a request line + headers must end within 64 KiB; beyond it the connection gets a
  431 JSON error and is closed, and nothing more is buffered (a request pipelined behind another in
  one read is counted from the next read on: slack of one read, 256 KiB at most);
- HEAD_TIMEOUT: a head must be complete within 10 s of the connection opening, or of its first byte
  for a later request on a kept-alive connection, else 408 and close;
- BODY_TIMEOUT: a body that makes no progress for 10-20 s (checked every 10 s; never while uvicorn
  itself paused reading because the app has not read yet) gets 408 and is closed.
A 408 is written only when no response is under way on the connection; otherwise it just closes.
The hot path adds counters and flags; one timer per connection fires every ~10 s at most.
The timeouts can be set (seconds) with CONVZOO_HEAD_TIMEOUT and CONVZOO_BODY_TIMEOUT.
"""

from __future__ import annotations

import json
import os

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from ..errors import ConfigError

MAX_HEAD_BYTES = 64 << 10


def _seconds(name: str, default: float) -> float:
    value = os.environ.get(name, "")
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < 1e6:
        raise ConfigError(f"{name}={value!r}: expected seconds, a number > 0")
    return seconds


HEAD_TIMEOUT = _seconds("CONVZOO_HEAD_TIMEOUT", 10.0)
BODY_TIMEOUT = _seconds("CONVZOO_BODY_TIMEOUT", 10.0)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    # Per connection: _head_bytes counts the head being received (None while a body is), _head_started
    # is when it began (None while waiting for the next request), _received counts every byte (the
    # stalled-body check compares it with _mark, last moved at _mark_time), _timer is the one pending check.

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._head_bytes = 0
        self._head_started = self.loop.time()  # a client that sends nothing gets HEAD_TIMEOUT too
        self._received = self._mark = 0
        self._timer = self.loop.call_later(HEAD_TIMEOUT, self._check)

    def connection_lost(self, exc) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._received += len(data)
        if self._head_bytes is None:  # a body: uvicorn's flow control and the app's 413 bound it
            super().data_received(data)
            return
        if self._head_started is None:  # the first byte of the next request on this connection
            self._start_head()
        room = MAX_HEAD_BYTES - self._head_bytes
        self._head_bytes += len(data)
        if len(data) <= room:
            super().data_received(data)
            return
        super().data_received(data[:room])  # the head must end within the limit ...
        if self.transport.is_closing():  # (a malformed head: uvicorn answered 400)
            return
        if self._head_bytes is not None and self._head_bytes > MAX_HEAD_BYTES:
            self._refuse(431, f"the request line and headers are larger than {MAX_HEAD_BYTES >> 10} KiB")
        else:  # ... and did: the rest is its body or the next request
            super().data_received(data[room:])

    def on_message_begin(self) -> None:
        if self._head_started is None:  # a pipelined request, begun in the packet that ended the last one
            self._start_head()
        super().on_message_begin()

    def _start_head(self) -> None:
        self._head_started = self.loop.time()
        if self._timer is None:
            self._timer = self.loop.call_later(HEAD_TIMEOUT, self._check)

    def on_headers_complete(self) -> None:
        self._head_bytes = None
        self._mark = self._received
        self._mark_time = now = self.loop.time()
        # the head's timer may be pending: _check re-arms one that fires early; one due late is replaced
        if self._timer is not None and self._timer.when() > now + BODY_TIMEOUT:
            self._timer.cancel()
            self._timer = None
        if self._timer is None:
            self._timer = self.loop.call_later(BODY_TIMEOUT, self._check)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._head_bytes = 0
        self._head_started = None
        super().on_message_complete()

    def _check(self) -> None:
        """The connection's timer: act on the state it finds, re-arm while a deadline is ahead."""
        self._timer = None
        if self.transport is None or self.transport.is_closing():
            return
        if self._head_bytes is None:  # receiving a body
            now = self.loop.time()
            if self._received != self._mark or self.flow.read_paused:
                self._mark, self._mark_time = self._received, now
                self._timer = self.loop.call_later(BODY_TIMEOUT, self._check)
            elif now - self._mark_time < BODY_TIMEOUT:  # the timer was the head's, armed earlier
                self._timer = self.loop.call_later(self._mark_time + BODY_TIMEOUT - now, self._check)
            else:
                self._refuse(408, f"no part of the request body arrived for {BODY_TIMEOUT:g} s")
        elif self._head_started is not None:  # receiving a head (or waiting for the first one)
            left = self._head_started + HEAD_TIMEOUT - self.loop.time()
            if left > 0:
                self._timer = self.loop.call_later(left, self._check)
            else:
                self._refuse(408, f"the request line and headers did not arrive within {HEAD_TIMEOUT:g} s")
        # else between requests: the app is answering, then uvicorn's timeout_keep_alive closes an idle one

    def _refuse(self, status: int, message: str) -> None:
        """A JSON error and close, or only close where a response has begun (ours would garble it)."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete or (self._head_bytes is None and not cycle.response_started):
            self._write_error(status, message)
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes httptools cannot parse (a bad request line, HTTP/9.9, a bad
        header), as JSON like every other error instead of plain text."""
        self._write_error(400, f"{msg.rstrip('.')} (malformed request line or headers)")
        self.transport.close()

    def _write_error(self, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        head = [STATUS_LINE[status]]
        head += [b"%s: %s\r\n" % pair for pair in self.server_state.default_headers]
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
                    % len(body))
        self.transport.write(b"".join(head) + body)
