"""uvicorn's httptools protocol with the two limits it lacks: the size of a request head, and time.

uvicorn (0.54, httptools parser) buffers a request line + headers of any size (httptools joins a
header's pieces until it ends: a never-ending 100 MB header held the event loop and hundreds of MB),
and keeps a connection open forever while a client sends nothing, half a head, or half a body
(slowloris). Its only timer is timeout_keep_alive (5 s), armed once a response is complete.

This subclass, passed to uvicorn as `http=` (one worker or several), adds per connection:
- MAX_HEAD_BYTES: a request line + headers must end within 64 KiB; beyond it the connection gets a
  431 JSON error and is closed, and nothing more is buffered (a request pipelined behind another in
  one read is counted from the next read on: slack of one read, 256 KiB at most); the trailer fields
  after a chunked body's last chunk get the same limit (counted from the read after that chunk's size
  line), and are dropped (uvicorn added them to the request's headers: 1 GB of them held 1 GB);
- HEAD_TIMEOUT: a head must be complete within 10 s of the connection opening, or of its first byte
  for a later request on a kept-alive connection, else 408 and close;
- BODY_TIMEOUT: a body is checked every 10 s (never while uvicorn itself paused reading because the
  app has not read yet): one that made no progress in that window, or arrived at under MIN_BODY_RATE,
  gets 408 and is closed;
- BODY_DEADLINE: a body must arrive within 120 s in all (time uvicorn paused reading not counted),
  checked at the same times, else 408 and close;
- MAX_PIPELINED: at most 16 requests wait behind the one being answered; a client that sends more
  (thousands of `GET /` in one read held ~10 MB per connection, never read back) gets answers to those,
  the last with `connection: close`, and nothing after them is parsed;
- WRITE_TIMEOUT: a client that reads none of its responses for 30 s (the transport's buffer over its
  high-water mark all that time) is cut off (abort: close() would wait for the buffer to drain);
- a response that starts before its request's body has arrived (413, 503, 405, ...) carries
  `connection: close`, and the rest of that body is read and dropped (lingering close, so the client,
  still sending, gets the response rather than a reset) for up to LINGER seconds: never parsed as a
  next request, never answered twice.
- bytes httptools cannot parse get a JSON 400 and close, after the answers to the whole requests parsed
  before them (written at once, the 400 and close lost those answers).
A 408 is written only when no response is under way on the connection; otherwise it just closes.
The hot path adds counters and flags; one timer per connection fires every ~10 s at most.
The timeouts can be set (seconds) with CONVZOO_HEAD_TIMEOUT, CONVZOO_BODY_TIMEOUT and
CONVZOO_WRITE_TIMEOUT, the body's minimum rate (bytes/s, 0: none) with CONVZOO_MIN_BODY_RATE, its
longest time (s, 0: none) with CONVZOO_BODY_DEADLINE.
"""

from __future__ import annotations

import json
import logging
import os

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from ..errors import ConfigError
from .heap import trim_heap_soon

MAX_HEAD_BYTES = 64 << 10


def _seconds(name: str, default: float, zero: bool = False, what: str = "seconds") -> float:
    value = os.environ.get(name, "")
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    low = 0 if zero else 0.001  # a timeout of 1e-300 s timed every request out at once
    if not low <= seconds < 1e6:
        raise ConfigError(f"{name}={value!r}: expected {what}, a number from {low:g} to 1e6")
    return seconds


HEAD_TIMEOUT = _seconds("CONVZOO_HEAD_TIMEOUT", 10.0)
BODY_TIMEOUT = _seconds("CONVZOO_BODY_TIMEOUT", 10.0)
WRITE_TIMEOUT = _seconds("CONVZOO_WRITE_TIMEOUT", 30.0)
# The slowest body accepted, averaged over each BODY_TIMEOUT window. UploadGate counts the body bytes a
# request holds against the worker's budget; without a floor, 13 uploads that had sent 5 MB each could
# keep it full for hours by sending a byte every few seconds. 1,000 B/s is far below any real link
# (dial-up is 7,000), and a body holding budget must now move it along: 64 MB held for an hour costs a
# client 13 connections x 1 KB/s ... x the hour, not one byte a second.
MIN_BODY_RATE = _seconds("CONVZOO_MIN_BODY_RATE", 1000.0, zero=True, what="bytes per second")
# The longest a body may take, as Go's http.Server ReadTimeout bounds one (the time uvicorn paused reading
# for the app not counted). The floor alone let ~46 clients at 1 KB/s fill the 64 MB budget in 25 minutes
# and hold it as long as they kept sending; now each holds 120 KB at most at that rate, so the same takes
# ~550 connections. 5 MB (the default --max-upload) at 50 KB/s, a slow mobile uplink, takes 105 s.
BODY_DEADLINE = _seconds("CONVZOO_BODY_DEADLINE", 120.0, zero=True)
MAX_PIPELINED = 16  # requests queued behind the one being answered; a browser pipelines none
LINGER = 5.0  # s the rest of a refused body is read and dropped after its error response (at most)


class _PipelineFull(Exception):
    """Raised in a parser callback to stop httptools parsing the rest of a read."""


# The logger of a connection whose parsing was stopped on purpose: uvicorn logs the parser's error (our
# _PipelineFull) as "Invalid HTTP request received.", a false line per hostile connection. Outside the
# logging tree (Logger(), not getLogger): uvicorn's dictConfig resets the loggers it finds there.
_QUIET = logging.Logger("convzoo.deploy.stopped", logging.CRITICAL)


class _Lingering:
    """The transport as one request's cycle sees it: uvicorn's close() after a response that came before
    the body becomes a lingering close (the client still sending gets the response, not a reset)."""

    def __init__(self, protocol):
        self._protocol = protocol

    def __getattr__(self, name):
        return getattr(self._protocol.transport, name)

    def close(self) -> None:
        self._protocol._linger()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    # Per connection: _head_bytes counts the head being received (None while a body is), _head_started
    # is when it began (None while waiting for the next request), _received counts every byte (the
    # stalled-body check compares it with _mark, last moved at _mark_time), _timer is the one pending check.
    # _stopped: no more requests are parsed on this connection (the pipeline overflowed, a body is being
    # dropped after its early response: _lingering, or bytes after whole requests were malformed: the 400
    # _after_answers waits for their answers); _trailer_bytes counts what follows a chunk's size line until
    # its data (None: not there; after the last chunk, trailer fields); _write_timer: pending while the client
    # reads nothing; _heavy: the connection queued many responses (the heap is trimmed once it goes);
    # _answering: the cycle that last sent (a response under way).

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._head_bytes = 0
        self._head_started = self.loop.time()  # a client that sends nothing gets HEAD_TIMEOUT too
        self._received = self._mark = 0
        self._trailer_bytes = None  # bytes after a chunked body's last chunk header (None: not there)
        self._stopped = self._lingering = self._heavy = False
        self._write_timer = self._answering = self._after_answers = None
        self._timer = self.loop.call_later(HEAD_TIMEOUT, self._check)

    def connection_lost(self, exc) -> None:
        for timer in (self._timer, self._write_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._write_timer = None
        # uvicorn marks only the newest request's cycle disconnected: one answered ahead of it, waiting for
        # the client to read, then wrote to the closed transport (uvloop: RuntimeError, a traceback per cut)
        for cycle in (self._answering, *(queued for queued, _ in self.pipeline)):
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        super().connection_lost(exc)
        if self._heavy:
            trim_heap_soon(self.loop)  # its cycles and unsent responses left holes glibc keeps (+500 MB)

    def pause_writing(self) -> None:
        """The client is not reading what it asked for: it has WRITE_TIMEOUT to start again."""
        super().pause_writing()
        self._heavy = True
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(WRITE_TIMEOUT, self._write_stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_stalled(self) -> None:
        self._write_timer = None
        if self.flow.write_paused and self.transport is not None:
            self.transport.abort()  # close() would keep the connection until the buffer drained: never

    def data_received(self, data: bytes) -> None:
        self._received += len(data)
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        if self._stopped:  # nothing more is parsed: a lingering body is dropped, an overflow waits unread
            if not self._lingering:
                self.flow.pause_reading()  # (uvicorn resumes reading after each response)
            return
        if self._head_bytes is None:
            self._body_received(data)
            return
        if self._head_started is None:  # the first byte of the next request on this connection
            self._start_head()
        room = MAX_HEAD_BYTES - self._head_bytes
        self._head_bytes += len(data)
        if len(data) <= room:
            super().data_received(data)
            return
        super().data_received(data[:room])  # the head must end within the limit ...
        if self.transport.is_closing() or self._stopped:  # (a malformed head: uvicorn answered 400)
            return
        if self._head_bytes is not None and self._head_bytes > MAX_HEAD_BYTES:
            self._refuse(431, f"the request line and headers are larger than {MAX_HEAD_BYTES >> 10} KiB")
        else:  # ... and did: the rest is its body or the next request
            super().data_received(data[room:])

    def _body_received(self, data: bytes) -> None:
        """A body's bytes: uvicorn's flow control and the app's 413 bound it. The trailer fields after a
        chunked body's last chunk are no body bytes: they get the head's limit (431 and close), counted
        from the read after the last chunk's header (slack of one read), a piece at a time as a head is."""
        while data and self._trailer_bytes is not None and self._head_bytes is None:
            room = MAX_HEAD_BYTES - self._trailer_bytes
            if room <= 0:
                limit = MAX_HEAD_BYTES >> 10
                self._refuse(431, f"the trailer fields after the chunked body are larger than {limit} KiB")
                return
            piece, data = data[:room], data[room:]
            self._trailer_bytes += len(piece)
            super().data_received(piece)
            if self.transport.is_closing() or self._stopped:
                return
        if data and self._head_bytes is None:  # chunk data came (on_body): the rest is body
            super().data_received(data)
        elif data:  # the message ended: what follows is the next request's head
            self._feed(data)

    def on_chunk_header(self) -> None:
        """A chunk's size line: its data clears this (on_body); the last chunk (size 0) has none, and
        what follows it until the message ends is trailer fields."""
        self._trailer_bytes = 0

    def on_body(self, body: bytes) -> None:
        self._trailer_bytes = None
        super().on_body(body)

    def on_header(self, name: bytes, value: bytes) -> None:
        """A trailer field (after the body) is dropped: uvicorn appended it to the request's headers, which
        the app had read already (thousands held hundreds of MB), and RFC 9110 lets a server discard them."""
        if self._head_bytes is not None:
            super().on_header(name, value)

    def on_message_begin(self) -> None:
        if len(self.pipeline) >= MAX_PIPELINED:  # one read held thousands of pipelined requests
            self._stop_pipeline()
            raise _PipelineFull  # httptools stops parsing this read; uvicorn calls send_400_response
        if self._head_started is None:  # a pipelined request, begun in the packet that ended the last one
            self._start_head()
        super().on_message_begin()

    def _start_head(self) -> None:
        self._head_started = self.loop.time()
        if self._timer is None:
            self._timer = self.loop.call_later(HEAD_TIMEOUT, self._check)

    def on_headers_complete(self) -> None:
        self._head_bytes = None
        self._body_time = 0.0  # s spent receiving this body, windows where uvicorn paused reading left out
        self._mark = self._received
        self._mark_time = now = self.loop.time()
        # the head's timer may be pending: _check re-arms one that fires early; one due late is replaced
        if self._timer is not None and self._timer.when() > now + BODY_TIMEOUT:
            self._timer.cancel()
            self._timer = None
        if self._timer is None:
            self._timer = self.loop.call_later(BODY_TIMEOUT, self._check)
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:  # (not a websocket upgrade)
            cycle.send = self._closing_early(cycle, cycle.send)  # before the app's task runs and looks it up

    def _closing_early(self, cycle, send):
        """The cycle's send: a response that starts while its request's body is still arriving (an error
        answered before reading it: 413, 503, 405 ...) closes the connection after it. Kept open, the
        rest of the body was answered again (a 408 later), or with `Expect: 100-continue` a pipelined
        request after it was swallowed as body."""
        async def send_then_close(message):
            self._answering = cycle
            if message["type"] == "http.response.start" and cycle.more_body and not cycle.response_started:
                cycle.keep_alive = False  # uvicorn adds `connection: close`, then calls close() ...
                cycle.transport = _Lingering(self)  # ... which drops the rest of the body first
            await send(message)
        return send_then_close

    def _stop_pipeline(self) -> None:
        """Answer the requests queued, the last with `connection: close`, and read nothing more."""
        self._stopped = self._heavy = True
        self.logger = _QUIET
        self.cycle.keep_alive = False  # the newest queued request (one is: the pipeline is not empty)
        self.flow.pause_reading()

    def _linger(self) -> None:
        """uvicorn's close() after an early response: send FIN after it, keep reading (and dropping) what
        the client still sends until it closes or LINGER s pass, then close. Closed at once with the body
        unread, the kernel answers the client's next bytes with a reset, which can destroy the response."""
        if self.transport is None or self.transport.is_closing():
            return
        self._stopped = self._lingering = True
        if self.transport.can_write_eof():
            self.transport.write_eof()  # after the response in the buffer
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(LINGER, self.transport.close)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes httptools cannot parse (a bad request line, HTTP/9.9, a bad
        header), as JSON like every other error instead of plain text; nothing when the parser was
        stopped on purpose (_PipelineFull). Bytes after whole requests not answered yet (`GET /healthz` then
        garbage in one read) wait for those answers: written at once, the 400 and close lost them."""
        if self._stopped:
            return
        message = f"{msg.rstrip('.')} (malformed request line or headers)"
        if self._head_bytes is not None and self.cycle is not None and (
                self.pipeline or not self.cycle.response_complete):  # (an error inside a body is that request's)
            self._stopped = True  # nothing more is parsed; on_response_complete sends it after the last answer
            self._after_answers = message
            self.flow.pause_reading()
            return
        self._write_error(400, message)
        self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._after_answers and not self.pipeline and self.cycle.response_complete \
                and not self.transport.is_closing():  # (closing: the last answer said `connection: close`)
            self._write_error(400, self._after_answers)
            self.transport.close()

    def on_message_complete(self) -> None:
        self._head_bytes = 0
        self._trailer_bytes = None
        self._head_started = None
        super().on_message_complete()

    def _check(self) -> None:
        """The connection's timer: act on the state it finds, re-arm while a deadline is ahead."""
        self._timer = None
        if self.transport is None or self.transport.is_closing() or self._stopped:
            return  # stopped: the queued answers (then close) or the write timeout end it
        if self._head_bytes is None:  # receiving a body: checked once per window of BODY_TIMEOUT
            now = self.loop.time()
            elapsed, arrived = now - self._mark_time, self._received - self._mark
            if self.flow.read_paused:  # uvicorn stopped reading: the app has not taken what came yet
                self._mark, self._mark_time = self._received, now
                self._timer = self.loop.call_later(BODY_TIMEOUT, self._check)
            elif elapsed < BODY_TIMEOUT:  # the timer was the head's, armed earlier
                self._timer = self.loop.call_later(self._mark_time + BODY_TIMEOUT - now, self._check)
            elif not arrived:
                self._refuse(408, f"no part of the request body arrived for {BODY_TIMEOUT:g} s")
            elif arrived < MIN_BODY_RATE * elapsed:
                self._refuse(408, f"the request body arrived at {arrived / elapsed:.0f} bytes/s over {elapsed:.0f} s; "
                                  f"the minimum is {MIN_BODY_RATE:g}")
            elif BODY_DEADLINE and self._body_time + elapsed >= BODY_DEADLINE:
                self._refuse(408, f"the request body did not arrive within {BODY_DEADLINE:g} s")
            else:
                self._body_time += elapsed
                self._mark, self._mark_time = self._received, now
                self._timer = self.loop.call_later(BODY_TIMEOUT, self._check)
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

    def _write_error(self, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        head = [STATUS_LINE[status]]
        head += [b"%s: %s\r\n" % pair for pair in self.server_state.default_headers]
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
                    % len(body))
        self.transport.write(b"".join(head) + body)
