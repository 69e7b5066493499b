"""A fault-injecting HTTP proxy to put between boto3 and moto's S3 server.

moto verifies no checksum, so the archiver's own integrity checks (Content-MD5 + ETag comparison,
manifest MD5, streaming download MD5) can only be proven by corrupting bytes on the wire. This
proxy listens on 127.0.0.1, forwards every request to the target endpoint (path-style addressing)
and applies programmable faults to the requests that match:

    from archive_pipeline_tests.fault_proxy import Fault, FaultProxy

    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add(Fault(method="PUT", path=r"\\.manifest\\.json$", action="flip_request_byte"))
        client = proxy.client(max_attempts=1)          # boto3 client that talks through the proxy
        ...
        assert proxy.requests(method="PUT")[-1].status == 200

Matching: ``method`` (exact, None = any), ``path`` (regex searched in the URL-decoded path, which
is ``/<bucket>/<key>``), ``query`` (substring of the raw query string: ``"uploads"`` for
CreateMultipartUpload, ``"partNumber="`` for UploadPart, ``"uploadId="`` for
Complete/Abort/UploadPart, ``"list-type"``...), ``skip`` (let that many matching requests through
first) and ``times`` (affect that many, None = every one). The first fault in ``add`` order that
matches and still has budget applies; one fault per request.

Actions (``Fault.action``):

- ``"flip_request_byte"``: XOR one payload byte of the request body (at ``offset``, default the
  middle) and forward it; the stored data is then corrupt and the ETag moto returns is the corrupt
  data's MD5. HTTP ``chunked`` bodies are de-chunked and aws-chunked framing is skipped, so the
  flipped byte is always inside the payload.
- ``"flip_response_byte"``: forward, then XOR one byte of the response body.
- ``"error"``: answer ``status`` (default 500) with an S3 XML ``<Error>`` of ``code``
  (default InternalError). ``"slow_down"``: 503 SlowDown.
- ``"error_200"``: answer 200 with an ``<Error>`` XML body (what S3 does when
  CompleteMultipartUpload fails after it has started answering).
  For these three, ``forward=True`` sends the request to the target first (the store did the
  work, the answer was lost); the default does not forward.
- ``"lose"``: answer 200 (with a made-up, non-MD5 ETag) without forwarding: a store that acknowledges a write
  and keeps nothing (what ``verify_etags: false`` cannot tell from a kept one).
- ``"reset_before"``: read the request, then reset the connection (TCP RST) without forwarding.
  ``"reset_after"``: forward, then reset instead of answering.
- ``"cut_response"``: forward, then answer with the full Content-Length but send only ``offset``
  bytes of the body (default: half) and close the connection (a body cut short).
  ``"reset_mid_body"``: the same, ending with a TCP RST instead of a close.
- ``"set_header"``: forward, then answer with response header ``header[0]`` set to ``header[1]``
  (``None``: removed), e.g. ``header=("ETag", None)`` for an answer without its ETag.
- ``"throttle"``: forward, reading the request body and sending the response body at ``rate``
  bytes/s. ``"delay"``: sleep ``delay`` seconds, then forward.
- ``"hold"``: keep the request until ``gate`` (a ``threading.Event``) is set, at most
  ``hold_timeout`` seconds, then forward. ``proxy.held()`` says how many requests wait right now, so
  a test can assert on ordering instead of wall time.

boto3 retries 5xx, throttling and connection errors itself (legacy mode: 5 attempts in all here):
use ``times=`` larger than that, or ``proxy.client(max_attempts=1)``. ``proxy.client()`` sets
``request_checksum_calculation="when_required"`` by default, so boto3 (>= 1.36) adds no CRC32 of
its own to PUTs and a flipped byte is caught only by the archiver's Content-MD5/ETag checks,
which is what these tests are about (moto does not verify Content-MD5 either). Pass
``request_checksum_calculation="when_supported"`` to get boto3's default behaviour.

Every request is recorded (``proxy.records``, ``proxy.requests(...)``) with its method, path,
query, the status answered (an int, or ``"reset"``) and the fault applied.
"""

from __future__ import annotations

import http.client
import re
import socket
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ACTIONS = frozenset({"lose", "flip_request_byte", "flip_response_byte", "error", "slow_down", "error_200",
                     "reset_before", "reset_after", "throttle", "delay", "hold", "cut_response", "reset_mid_body",
                     "set_header"})
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
                         "upgrade", "expect", "content-length"})


@dataclass
class Fault:
    """One programmable fault; see the module docstring for the matching rules and actions."""

    method: str | None = None
    path: str | None = None
    query: str | None = None
    action: str = "error"
    status: int = 500
    code: str = "InternalError"
    skip: int = 0
    times: int | None = 1
    offset: int | None = None  # flip: which payload byte (negative: from the end; None: the middle)
    rate: int | None = None  # throttle: bytes per second
    delay: float = 0.0  # delay: seconds before forwarding
    gate: threading.Event | None = None  # hold: released when set
    hold_timeout: float = 60.0
    forward: bool = False  # error/slow_down/error_200: forward the request first
    header: tuple[str, str | None] | None = None  # set_header: (name, value or None to remove)
    seen: int = field(default=0, init=False)  # matching requests so far
    hits: int = field(default=0, init=False)  # requests this fault was applied to

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown fault action {self.action!r}; one of {sorted(ACTIONS)}")
        if self.action == "hold" and self.gate is None:
            self.gate = threading.Event()
        self._path = re.compile(self.path) if self.path else None

    def matches(self, method: str, path: str, query: str) -> bool:
        return ((self.method is None or self.method.upper() == method)
                and (self._path is None or self._path.search(path) is not None)
                and (self.query is None or self.query in query))


@dataclass(frozen=True)
class Record:
    """One request the proxy saw, and what it answered."""

    method: str
    path: str  # URL-decoded
    query: str  # raw query string
    status: int | str | None  # HTTP status sent back, "reset", "cut", or None while in progress (set before
    # the client can see the answer, so a test may assert on it right after its call returns)
    fault: str | None  # the action applied, if any


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    proxy: FaultProxy


class FaultProxy:
    """A threaded HTTP proxy on 127.0.0.1 that forwards to ``target_url`` and injects faults."""

    def __init__(self, target_url: str, *, upstream_timeout: float = 120.0) -> None:
        parsed = urllib.parse.urlsplit(target_url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"FaultProxy forwards to plain http endpoints, got {target_url!r}")
        self.target = (parsed.hostname, parsed.port or 80)
        self.upstream_timeout = upstream_timeout
        self.faults: list[Fault] = []
        self.records: list[Record] = []
        self._lock = threading.Lock()
        self._held = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            for fault in self.faults:  # let held requests go so their threads end
                if fault.gate is not None:
                    fault.gate.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start the proxy first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # --- faults and records --------------------------------------------------------------------
    def add(self, fault: Fault) -> Fault:
        """Add a fault (applied after the ones added before it); returns it for ``hits``/``gate``."""
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        """Remove every fault (releasing held requests) and forget the records."""
        with self._lock:
            for fault in self.faults:
                if fault.gate is not None:
                    fault.gate.set()
            self.faults.clear()
            self.records.clear()

    def requests(self, method: str | None = None, path: str | None = None, query: str | None = None,
                 ) -> list[Record]:
        """The recorded requests that match, in arrival order (same matching rules as Fault)."""
        probe = Fault(method=method, path=path, query=query)
        with self._lock:
            return [r for r in self.records if probe.matches(r.method, r.path, r.query)]

    def held(self) -> int:
        """How many requests a ``hold`` fault keeps waiting right now."""
        with self._lock:
            return self._held

    def wait_held(self, count: int, timeout: float = 30.0) -> bool:
        """Wait (bounded) until at least ``count`` requests are held; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.held() >= count:
                return True
            time.sleep(0.01)
        return self.held() >= count

    def client(self, *, max_attempts: int | None = None, request_checksum_calculation: str = "when_required",
               response_checksum_validation: str = "when_supported", read_timeout: float = 60.0,
               **config: Any):
        """A boto3 S3 client that talks to the target through this proxy (path-style).

        ``max_attempts`` is the total number of attempts per request (1 = no retries); None keeps
        botocore's default (legacy mode, 5 attempts).
        """
        import boto3
        from botocore.config import Config

        retries = {"mode": "legacy"} if max_attempts is None else {"mode": "legacy",
                                                                   "total_max_attempts": max_attempts}
        cfg = Config(s3={"addressing_style": "path"}, retries=retries, read_timeout=read_timeout,
                     connect_timeout=10, request_checksum_calculation=request_checksum_calculation,
                     response_checksum_validation=response_checksum_validation, **config)
        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1", aws_access_key_id="testing",
                            aws_secret_access_key="testing", config=cfg)

    # --- internals -----------------------------------------------------------------------------
    def _pick(self, method: str, path: str, query: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if not fault.matches(method, path, query):
                    continue
                fault.seen += 1
                if fault.seen <= fault.skip or (fault.times is not None and fault.hits >= fault.times):
                    continue
                fault.hits += 1
                return fault
            return None

    def _record(self, index: int | None, record: Record) -> int:
        with self._lock:
            if index is None:
                self.records.append(record)
                return len(self.records) - 1
            self.records[index] = record
            return index

    def _hold(self, delta: int) -> None:
        with self._lock:
            self._held += delta


def error_xml(code: str, message: str = "injected by FaultProxy") -> bytes:
    """An S3 error document."""
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<RequestId>FAULTPROXY</RequestId><HostId>fault-proxy</HostId></Error>").encode()


def payload_spans(body: bytes, content_encoding: str) -> list[tuple[int, int]]:
    """Where the payload bytes are inside ``body``: the whole body, or the data of each aws-chunked
    chunk (``<hex-size>[;ext]\\r\\n<data>\\r\\n`` ... ``0\\r\\n<trailers>``)."""
    if "aws-chunked" not in content_encoding.lower():
        return [(0, len(body))] if body else []
    spans, pos = [], 0
    while pos < len(body):
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            break
        size = int(body[pos:eol].split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            break
        spans.append((eol + 2, eol + 2 + size))
        pos = eol + 2 + size + 2
    return spans


def flip_byte(body: bytes, spans: list[tuple[int, int]], offset: int | None) -> bytes:
    """``body`` with one payload byte XORed with 0x5A (``offset`` into the payload, negative from its
    end, default its middle)."""
    total = sum(end - start for start, end in spans)
    if total == 0:
        return body
    if offset is None:
        want = total // 2
    else:
        want = min(max(offset if offset >= 0 else total + offset, 0), total - 1)
    for start, end in spans:
        if want < end - start:
            data = bytearray(body)
            data[start + want] ^= 0x5A
            return bytes(data)
        want -= end - start
    return body  # pragma: no cover - want < total


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def do_GET(self) -> None:
        self._handle()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    def _read_body(self, rate: int | None) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return bytes(out)
                out += self._read_exact(size, rate)
                self.rfile.readline()
        return self._read_exact(int(self.headers.get("Content-Length") or 0), rate)

    def _read_exact(self, length: int, rate: int | None) -> bytes:
        out = bytearray()
        step = max(1024, rate // 20) if rate else 1 << 20
        while len(out) < length:
            chunk = self.rfile.read(min(step, length - len(out)))
            if not chunk:
                raise ConnectionError("client closed the connection mid-body")
            out += chunk
            if rate:
                time.sleep(len(chunk) / rate)
        return bytes(out)

    def _handle(self) -> None:
        proxy = self.server.proxy
        split = urllib.parse.urlsplit(self.path)
        method, path, query = self.command, urllib.parse.unquote(split.path), split.query
        fault = proxy._pick(method, path, query)
        action = fault.action if fault else None
        index = proxy._record(None, Record(method, path, query, None, action))

        def answered(status: int | str) -> None:  # recorded before the client can see the answer
            proxy._record(index, Record(method, path, query, status, action))

        try:
            body = self._read_body(fault.rate if action == "throttle" else None)
            if action == "reset_before":
                answered("reset")
                self._reset()
                return
            if action == "lose":
                answered(200)
                self._answer(200, [("ETag", '"lost-by-faultproxy"')], b"", method)
                return
            if action == "delay":
                time.sleep(fault.delay)
            if action == "hold":
                proxy._hold(1)
                try:
                    fault.gate.wait(fault.hold_timeout)
                finally:
                    proxy._hold(-1)
            if action == "flip_request_byte":
                body = flip_byte(body, payload_spans(body, self.headers.get("Content-Encoding", "")), fault.offset)
            if action in ("error", "slow_down", "error_200"):
                if fault.forward:
                    self._forward(method, body)
                if action == "error_200":
                    status, code = 200, fault.code
                else:
                    status, code = (503, "SlowDown") if action == "slow_down" else (fault.status, fault.code)
                answered(status)
                self._answer(status, [("Content-Type", "application/xml")], error_xml(code), method)
                return
            status_code, headers, payload = self._forward(method, body)
            if action == "reset_after":
                answered("reset")
                self._reset()
                return
            if action == "flip_response_byte" and payload:
                payload = flip_byte(payload, [(0, len(payload))], fault.offset)
            if action == "set_header":
                name, value = fault.header
                headers = [(k, v) for k, v in headers if k.lower() != name.lower()]
                headers += [(name, value)] if value is not None else []
            if action in ("cut_response", "reset_mid_body") and payload:
                answered("cut")
                self._cut(status_code, headers, payload, fault.offset, reset=action == "reset_mid_body")
                return
            answered(status_code)
            self._answer(status_code, headers, payload, method, rate=fault.rate if action == "throttle" else None)
        except (ConnectionError, OSError, http.client.HTTPException):
            answered("reset")
            self.close_connection = True

    def _forward(self, method: str, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        host, port = self.server.proxy.target
        conn = http.client.HTTPConnection(host, port, timeout=self.server.proxy.upstream_timeout)
        try:
            conn.putrequest(method, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in _HOP_BY_HOP:
                    conn.putheader(name, value)
            if body or method in ("PUT", "POST"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            response = conn.getresponse()
            payload = response.read()
            headers = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP
                       or (method == "HEAD" and k.lower() == "content-length")]
            return response.status, headers, payload
        finally:
            conn.close()

    def _answer(self, status: int, headers: list[tuple[str, str]], payload: bytes, method: str,
                rate: int | None = None) -> None:
        self.send_response_only(status)
        for name, value in headers:
            self.send_header(name, value)
        if not any(name.lower() == "date" for name, _ in headers):
            self.send_header("Date", self.date_time_string())
        if method != "HEAD":
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if method == "HEAD" or not payload:
            self.wfile.flush()
            return
        step = max(1024, rate // 20) if rate else len(payload)
        for start in range(0, len(payload), step):
            self.wfile.write(payload[start:start + step])
            if rate:
                self.wfile.flush()
                time.sleep(min(step, len(payload) - start) / rate)
        self.wfile.flush()

    def _cut(self, status: int, headers: list[tuple[str, str]], payload: bytes, sent: int | None, *,
             reset: bool) -> None:
        """Announce all of ``payload`` (Content-Length), send only ``sent`` bytes of it, then close or reset."""
        self.send_response_only(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload[:len(payload) // 2 if sent is None else sent])
        self.wfile.flush()
        if reset:
            self._reset()
            return
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _reset(self) -> None:
        """Close the client connection with a TCP RST (SO_LINGER 0), answering nothing."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass


__all__ = ["ACTIONS", "Fault", "FaultProxy", "Record", "error_xml", "flip_byte", "payload_spans"]
