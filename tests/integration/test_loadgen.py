"""llmgate-loadgen, the benchmarks' load generator: the counts it reports add up,
it parses the response framings the benchmarks meet (Content-Length, chunked
SSE, HTTP/1.0 close), it times requests on the wire, and it refuses anything but
loopback. Short runs against the mock; every assertion is on counts, none on
timing."""
import csv
import http.server
import io
import subprocess
import threading

import pytest

from conftest import BUILDDIR

LOADGEN = BUILDDIR / "llmgate-loadgen"
BODY = '{"model":"mock-model","messages":[{"role":"user","content":"hi"}],"max_tokens":4%s}'


def loadgen(*args, timeout=60):
    p = subprocess.run([str(LOADGEN), "--csv-header", "--quiet", *args], capture_output=True,
                       text=True, timeout=timeout)
    rows = list(csv.DictReader(io.StringIO(p.stdout))) if p.returncode == 0 else []
    return p, (rows[0] if rows else None)


def n(row, k):
    return float(row[k])


def check_consistent(row):
    assert n(row, "errors") == 0, row
    assert n(row, "ok") == n(row, "sent") > 0, row
    assert n(row, "p50_us") <= n(row, "p90_us") <= n(row, "p99_us") <= n(row, "max_us"), row
    assert n(row, "service_p50_us") <= n(row, "service_p99_us"), row
    assert n(row, "wire_p50_us") <= n(row, "wire_p99_us"), row


@pytest.mark.parametrize("stream", [False, True])
def test_closed_loop_counts_and_wire_samples(mock, stream):
    conns = 4
    p, row = loadgen("--url", f"{mock.url}/v1/chat/completions", "--connections", str(conns),
                     "--duration", "1", "--header", "Authorization: Bearer sk-x",
                     "--body", BODY % (',"stream":true' if stream else ""))
    assert p.returncode == 0, p.stderr
    check_consistent(row)
    # Only a connection's first request (queued before the connect finished)
    # goes through the bufferevent and has no wire time.
    assert n(row, "ok") - conns <= n(row, "wire_samples") <= n(row, "ok"), row
    assert n(row, "wire_p50_us") > 0, row


def test_open_loop_sends_exactly_the_schedule(mock):
    p, row = loadgen("--url", f"{mock.url}/v1/chat/completions", "--rate", "300",
                     "--connections", "8", "--duration", "1", "--warmup", "0.5",
                     "--header", "Authorization: Bearer sk-x", "--body", BODY % "")
    assert p.returncode == 0, p.stderr
    # 300/s for 1 measured second: exactly 300 measured arrivals, all answered.
    assert n(row, "sent") == 300, row
    check_consistent(row)


class _Http10(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # every answer closes its connection

    def do_GET(self):
        body = b"hello\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def test_http10_close_reconnects_without_errors():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Http10)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        p, row = loadgen("--url", f"http://127.0.0.1:{srv.server_address[1]}/x", "--method", "GET",
                         "--rate", "100", "--connections", "4", "--duration", "1")
    finally:
        srv.shutdown()
        srv.server_close()
    assert p.returncode == 0, p.stderr
    assert n(row, "sent") == 100, row
    check_consistent(row)


def test_refuses_non_loopback_targets():
    p, row = loadgen("--url", "http://192.0.2.1:80/", "--duration", "1")
    assert p.returncode != 0 and row is None
    assert "not a loopback address" in p.stderr
