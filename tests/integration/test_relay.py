"""The relay's edges as raw HTTP clients and scripted upstreams see them.

HTTP/1.0 streams (close-delimited, completed without touching freed memory), a
client pushing bytes while its stream runs (bounded memory, close still seen),
the connection's read timeout after a stream, a tenant's null max_tokens, and
upstream JSON followed by junk. A scripted upstream (FakeUpstream) holds the end
of a stream until the client has read its last event, so the gateway completes
the reply with nothing left to write; it waits on an event, never on a clock.
"""
import json
import os
import socket
import threading
import uuid

import httpx
import pytest

from conftest import API_KEY, WAIT_S, Gateway, wait_until

ADMIN = "admin-token-for-tests-0123456789"
os.environ["LLMGATE_ADMIN_TOKEN"] = ADMIN
MSGS = [{"role": "user", "content": "Say hello"}]


# ------------------------------------------------------------------ a scripted upstream

def _chunk(b):
    return b"%x\r\n" % len(b) + b + b"\r\n"


def _event(obj):
    return ("data: " + (obj if isinstance(obj, str) else json.dumps(obj)) + "\n\n").encode()


def _delta(content=None, finish=None, role=None):
    d = {}
    if role:
        d["role"] = role
    if content is not None:
        d["content"] = content
    return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": "fake",
            "choices": [{"index": 0, "delta": d, "finish_reason": finish}]}


COMPLETION = {"id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": "fake",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                           "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


class FakeUpstream:
    """An OpenAI-compatible upstream whose answer is scripted by the upstream model
    name. `release` is set by a test when the end of a held stream may go out."""

    def __init__(self):
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(64)
        self.url = "http://127.0.0.1:%d" % self.ls.getsockname()[1]
        self.release = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self):
        self.ls.close()

    def _accept(self):
        while True:
            try:
                conn, _ = self.ls.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn:
            try:
                self._answer(conn)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the gateway hung up once it had what it needed (a malformed event)

    def _answer(self, conn):
        f = conn.makefile("rb")
        line = f.readline()
        headers = {}
        while (h := f.readline()) not in (b"\r\n", b""):
            k, v = h.decode().split(":", 1)
            headers[k.strip().lower()] = v.strip()
        body = f.read(int(headers.get("content-length", "0")))
        if not line.startswith(b"POST"):  # health probes
            out = b'{"object":"list","data":[]}'
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(out) + out)
            return
        script = json.loads(body)["model"]
        if script == "junk-body":
            out = json.dumps(COMPLETION).encode() + b"junk"
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(out) + out)
            return
        if script in ANTHROPIC_ERRORS:  # a Messages stream whose first event is an error
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Retry-After: 7\r\nConnection: close\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            err = {"type": "error", "error": {"type": ANTHROPIC_ERRORS[script], "message": "x"}}
            conn.sendall(_chunk(b"event: error\n" + _event(err)) + b"0\r\n\r\n")
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        conn.sendall(_chunk(_event(_delta(role="assistant", content=""))) +
                     _chunk(_event(_delta(content="hello"))) +
                     _chunk(_event(_delta(finish="stop"))))
        if script == "no-text":  # reasoning and a tool call after the content
            call = {"index": 0, "id": "call_1", "type": "function",
                    "function": {"name": "f", "arguments": ""}}
            out = [{"reasoning_content": "think"}, {"reasoning_content": "more"},
                   {"tool_calls": [call]}]
            out += [{"tool_calls": [{"index": 0, "function": {"arguments": a}}]}
                    for a in ('{"a"', ':', '1}')]
            for d in out:
                ev = _delta()
                ev["choices"][0]["delta"] = d
                conn.sendall(_chunk(_event(ev)))
        if script == "junk-usage":
            usage = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
                     "model": "fake", "choices": [],
                     "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
            conn.sendall(_chunk(("data: " + json.dumps(usage) + "junk\n\n").encode()))
        conn.sendall(_chunk(_event("[DONE]")))
        if script == "done-late":
            # the client has read [DONE]: the gateway has nothing left to write
            # when the upstream's end reaches it
            self.release.wait(WAIT_S)
        conn.sendall(b"0\r\n\r\n")


FAKE_MODELS = {name: {"provider": "fake", "model": name}
               for name in ("done-late", "junk-body", "junk-usage", "no-text")}
# upstream model -> the Anthropic error type its stream reports as its first event
ANTHROPIC_ERRORS = {"anth-rate-limited": "rate_limit_error", "anth-api-error": "api_error"}


def fake_conf(fake):
    return {"providers": {"fake": {"kind": "openai", "base_url": fake.url + "/v1",
                                   "first_byte_timeout_ms": 5000, "idle_timeout_ms": 5000},
                          # claude-model is never reached: the requests sent to it cannot be
                          # translated
                          "anth": {"kind": "anthropic", "base_url": fake.url + "/v1"}},
            "models": {**FAKE_MODELS, "claude-model": {"provider": "anth", "model": "claude"},
                       **{m: {"provider": "anth", "model": m} for m in ANTHROPIC_ERRORS}}}


@pytest.fixture(scope="module")
def fake():
    f = FakeUpstream()
    yield f
    f.close()


# ------------------------------------------------------------------ raw HTTP helpers

def _post(port, body, version="1.1", headers=(), key=API_KEY):
    s = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    data = json.dumps(body).encode()
    head = [f"POST /v1/chat/completions HTTP/{version}", "Host: t", "Content-Type: application/json",
            f"Authorization: Bearer {key}", f"Content-Length: {len(data)}", *headers]
    s.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + data)
    return s


def _read_head(f):
    status_line = f.readline()
    headers = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        k, v = line.decode().split(":", 1)
        headers.setdefault(k.strip().lower(), []).append(v.strip())
    return status_line, headers


def _read_chunked(f):
    body = b""
    while (n := int(f.readline().split(b";")[0], 16)) > 0:
        body += f.read(n)
        f.readline()
    f.readline()
    return body


def _read_done_then_release(f, fake):
    """Reads an HTTP/1.0 stream up to its [DONE], lets the fake upstream end its
    response (the end arrives after the last event), then reads to the close: the
    end of an HTTP/1.0 body."""
    body = b""
    while b"data: [DONE]\n\n" not in body:
        d = f.read1(65536)
        assert d, body
        body += d
    fake.release.set()
    return body + f.read()


def _sse_ok(text):
    events = [e for e in text.split("\n\n") if e.strip()]
    assert events and events[-1] == "data: [DONE]", text[-300:]
    for e in events[:-1]:
        assert e.startswith("data: ")
        json.loads(e[6:])


def _log_line(gw, rid):
    def find():
        if not gw.access_log.exists():
            return None
        for line in gw.access_log.read_text().splitlines():
            if line.startswith("{") and json.loads(line).get("id") == rid:
                return json.loads(line)
        return None
    return wait_until(find, f"access log line of {rid}")


def _rss_kb(gw):
    with open(f"/proc/{gw.proc.p.pid}/status") as f:
        return int(next(l for l in f if l.startswith("VmRSS")).split()[1])


# ------------------------------------------------------------------ static key, no Redis

@pytest.fixture(scope="module")
def gw(tmp_mod, mock, fake):
    conf = fake_conf(fake)
    conf["models"]["mock-model"] = {"provider": "mock", "model": "upstream-model"}
    conf["limits"] = {"read_timeout_ms": 1000}
    g = Gateway(tmp_mod, mock.url, workers=1, extra_conf=conf, name="gw-relay")
    yield g
    rc = g.proc.stop()
    assert rc == 0, f"gateway exited {rc}:\n{g.proc.output()[-4000:]}"


def test_http10_stream_completing_with_nothing_to_write(gw, fake):
    """An HTTP/1.0 stream whose upstream ends after the client read everything:
    evhttp completes the reply and frees the connection inside the call; the
    request must not be used after that (ASan aborts the gateway if it is)."""
    fake.release.clear()
    rid = "h10-" + uuid.uuid4().hex
    s = _post(gw.port, {"model": "done-late", "messages": MSGS, "stream": True}, version="1.0",
              headers=[f"x-request-id: {rid}"])
    with s:
        f = s.makefile("rb")
        status, headers = _read_head(f)
        assert status.startswith(b"HTTP/1.0 200") or status.startswith(b"HTTP/1.1 200"), status
        body = _read_done_then_release(f, fake)
    _sse_ok(body.decode())
    assert "content-length" not in headers
    line = _log_line(gw, rid)
    assert line["status"] == 200 and not line.get("error"), line
    assert gw.proc.alive(), gw.proc.output()[-4000:]
    assert httpx.get(gw.url + "/healthz", timeout=WAIT_S).status_code == 200


def test_http10_keepalive_stream_is_close_delimited(gw):
    """evhttp frames a kept-alive HTTP/1.0 reply with the length queued at its start
    (Content-Length: 0); a stream must end at the close instead."""
    s = _post(gw.port, {"model": "mock-model", "messages": MSGS, "stream": True, "max_tokens": 3},
              version="1.0", headers=["Connection: keep-alive"])
    with s:
        f = s.makefile("rb")
        status, headers = _read_head(f)
        body = f.read()  # the gateway closes after the stream
    assert status.split()[1] == b"200", status
    assert "content-length" not in headers, headers
    assert "transfer-encoding" not in headers, headers
    assert [v.lower() for v in headers.get("connection", [])] == ["close"], headers
    _sse_ok(body.decode())


@pytest.fixture(scope="module")
def gw_small_quarantine(tmp_mod, mock):
    """A gateway whose memory is measured: under ASan, freed memory is held in a
    quarantine (256 MiB by default) that would count as growth in its RSS."""
    old = os.environ.get("ASAN_OPTIONS")
    os.environ["ASAN_OPTIONS"] = (old + ":" if old else "") + \
        "quarantine_size_mb=1:thread_local_quarantine_size_kb=64"
    try:
        g = Gateway(tmp_mod, mock.url, workers=1, name="gw-relay-rss")
    finally:
        if old is None:
            del os.environ["ASAN_OPTIONS"]
        else:
            os.environ["ASAN_OPTIONS"] = old
    yield g
    rc = g.proc.stop()
    assert rc == 0, f"gateway exited {rc}:\n{g.proc.output()[-4000:]}"


def test_client_input_during_stream_is_bounded(gw_small_quarantine, mock):
    """Bytes a client pushes while its stream runs are not all kept in memory, and
    its close is still seen (the upstream is cancelled)."""
    gw = gw_small_quarantine
    cancelled = mock.stats()["cancelled"]
    s = _post(gw.port, {"model": "mock-model", "messages": MSGS, "stream": True},
              headers=["x-mock-interval-ms: 100", "x-mock-tokens: 100000"])
    f = s.makefile("rb")
    status, _ = _read_head(f)
    assert status.split()[1] == b"200"
    assert f.read1(65536)  # the stream runs
    base = _rss_kb(gw)
    junk = b"x" * (1 << 20)
    sent = 0
    s.settimeout(2)  # a send that waits this long: the gateway stopped reading
    try:
        while sent < (64 << 20):
            sent += s.send(junk)
    except socket.timeout:
        pass
    grown = _rss_kb(gw) - base
    f.close()  # the socket closes with its last reference
    s.close()
    print(f"RSS grew by {grown} kB after the client sent {sent >> 20} MiB")
    assert grown < 32 * 1024, f"RSS grew by {grown} kB after the client sent {sent >> 20} MiB"
    wait_until(lambda: mock.stats()["cancelled"] > cancelled, "the upstream cancelled after the close")
    wait_until(lambda: mock.stats()["in_flight"] == 0, "no upstream request left in flight")


def test_read_timeout_applies_again_after_a_stream(gw):
    """A stream lifts the connection's read timeout while it runs; the next
    request on the kept-alive connection has it again (read_timeout_ms 1000)."""
    s = _post(gw.port, {"model": "mock-model", "messages": MSGS, "stream": True, "max_tokens": 2})
    with s:
        f = s.makefile("rb")
        status, headers = _read_head(f)
        assert status.split()[1] == b"200" and headers["transfer-encoding"] == ["chunked"]
        _sse_ok(_read_chunked(f).decode())
        s.sendall(b"POST /v1/chat/comp")  # a request that never completes
        s.settimeout(15)  # a bound on the failure only: the gateway closes after ~1 s
        try:
            rest = f.read()
        except socket.timeout:
            pytest.fail("the connection is still open 15 s after a partial request")
    assert b"200 OK" not in rest


@pytest.mark.parametrize("path,body,param", [
    ("/v1/embeddings", {"model": "claude-model", "input": "x"}, "model"),
    ("/v1/chat/completions", {"model": "claude-model", "messages": MSGS, "n": 2}, "n"),
    ("/v1/chat/completions",
     {"model": "claude-model", "messages": [*MSGS, {"role": "user", "content": [
         {"type": "text", "text": "hear this"},
         {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]},
     "messages[1].content[1]"),
])
def test_request_no_provider_can_express_is_400(gw, path, body, param):
    """A request every target's adapter cannot express is the client's error, not
    an outage: 400, never 503 "circuit open", naming the field it cannot express."""
    r = httpx.post(gw.url + path, json=body, headers={"Authorization": f"Bearer {API_KEY}"},
                   timeout=WAIT_S)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["code"] == "unsupported_by_provider"
    assert "anth" in err["message"] and "circuit" not in err["message"]
    assert err["param"] == param
    if param != "model":
        assert f"cannot express `{param}`" in err["message"]


@pytest.mark.parametrize("model,status,type_,code", [
    ("anth-rate-limited", 429, "rate_limit_error", "upstream_rate_limited"),
    ("anth-api-error", 502, "upstream_error", "upstream_error"),
])
def test_anthropic_error_event_before_first_token_is_that_error(gw, model, status, type_, code):
    """An Anthropic stream whose first event is an error the upstream reports is a
    clean HTTP error saying what it reported (429 with the head's Retry-After), not a
    malformed upstream."""
    rid = "anth-err-" + uuid.uuid4().hex
    r = httpx.post(gw.url + "/v1/chat/completions", timeout=WAIT_S,
                   json={"model": model, "messages": MSGS, "stream": True},
                   headers={"Authorization": f"Bearer {API_KEY}", "x-request-id": rid})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert (err["type"], err["code"]) == (type_, code)
    assert "malformed" not in err["message"]
    assert r.headers.get("retry-after") == ("7" if status == 429 else None)
    line = _log_line(gw, rid)
    assert (line["status"], line["error"]) == (status, code)


# ------------------------------------------------------------------ tenant keys, cache, Redis

def admin(g, method, path, body=None):
    return httpx.request(method, g.url + "/admin/v1/" + path, json=body, timeout=10,
                         headers={"Authorization": f"Bearer {ADMIN}"})


def make_key(g, tenant):
    r = admin(g, "POST", "tenants", {"id": tenant, "limits": {}})
    assert r.status_code in (201, 409), r.text
    r = admin(g, "POST", "keys", {"tenant": tenant})
    assert r.status_code == 201, r.text
    return r.json()["key"]


def usage_record(redis, request_id):
    def find():
        for _id, f in redis.cmd("XRANGE", "llmgate:usage", "-", "+"):
            d = dict(zip(f[::2], f[1::2]))
            if d["request_id"] == request_id:
                return d
        return None
    return wait_until(find, f"the usage record of {request_id}")


@pytest.fixture(scope="module")
def gwr(tmp_mod, mock, fake, redis_server):
    conf = fake_conf(fake)
    conf["models"]["mock-model"] = {"provider": "mock", "model": "upstream-model"}
    conf.update({"redis": {"port": redis_server.port, "command_timeout_ms": 500},
                 "auth": {"redis_keys": True}, "usage": {"spool_path": str(tmp_mod / "relay.spool")},
                 "quota": {"default_max_tokens": 9}, "cache": {"l1_bytes": 0}})
    g = Gateway(tmp_mod, mock.url, workers=1, extra_conf=conf, name="gw-relay-redis")
    yield g
    rc = g.proc.stop()
    assert rc == 0, f"gateway exited {rc}:\n{g.proc.output()[-4000:]}"


def test_http10_stream_of_a_tenant_is_cached_and_logged(gwr, fake, redis_server):
    """The HTTP/1.0 stream that completes inside evhttp's call still ends as a
    success: logged as 200 and stored in the response cache."""
    key = make_key(gwr, "relay-h10")
    fake.release.clear()
    rid = "h10c-" + uuid.uuid4().hex
    s = _post(gwr.port, {"model": "done-late", "messages": MSGS, "stream": True, "temperature": 0},
              version="1.0", headers=[f"x-request-id: {rid}"], key=key)
    with s:
        f = s.makefile("rb")
        _read_head(f)
        body = _read_done_then_release(f, fake)
    _sse_ok(body.decode())
    assert _log_line(gwr, rid)["status"] == 200
    wait_until(lambda: redis_server.cmd("KEYS", "llmgate:rc:{relay-h10}:*"), "the stream stored")
    assert gwr.proc.alive(), gwr.proc.output()[-4000:]


def test_null_max_tokens_is_replaced_not_duplicated(gwr, mock):
    """A tenant's request with "max_tokens": null goes upstream with one max_tokens:
    the cap the reservation assumed (quota.default_max_tokens)."""
    key = make_key(gwr, "relay-null")
    r = httpx.post(gwr.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                   json={"model": "mock-model", "messages": MSGS, "max_tokens": None}, timeout=WAIT_S)
    assert r.status_code == 200, r.text
    pairs = []

    def keep_pairs(kv):
        pairs.append(kv)
        return dict(kv)

    json.loads(httpx.get(mock.url + "/mock/stats", timeout=5).text, object_pairs_hook=keep_pairs)
    body = next(kv for kv in pairs if any(k == "messages" for k, _ in kv))  # last.body, verbatim
    assert [v for k, v in body if k == "max_tokens"] == [9], body
    assert r.json()["usage"]["completion_tokens"] == 9


@pytest.mark.parametrize("model,stream", [("junk-body", False), ("junk-usage", True)])
def test_upstream_json_with_trailing_junk_is_malformed(gwr, model, stream):
    """`{...}junk` from the upstream is a malformed answer on the metered and
    cached paths too (as jsonv_check makes it for static keys): never relayed
    as good, never cached."""
    key = make_key(gwr, "relay-junk-" + model)
    for _ in range(2):  # once stored, the second would be a hit; never one here
        r = httpx.post(gwr.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                       json={"model": model, "messages": MSGS, "stream": stream, "temperature": 0},
                       timeout=WAIT_S)
        assert r.headers.get("x-llmgate-cache") != "hit", r.headers
        if not stream:
            assert r.status_code == 502, r.text
            assert r.json()["error"]["code"] == "upstream_malformed"
        else:
            assert r.status_code == 200  # the events before it went out
            assert "event: error" in r.text and "upstream_malformed" in r.text, r.text


@pytest.mark.parametrize("temperature", [None, 0])  # scanned only / parsed for the cache
def test_reasoning_and_tool_call_chunks_are_metered(gwr, redis_server, temperature):
    """A stream without usage is charged one token per chunk of generated output:
    reasoning_content and tool call argument fragments count, not only content."""
    key = make_key(gwr, "relay-meter")
    rid = "meter-" + uuid.uuid4().hex
    body = {"model": "no-text", "stream": True, "messages": [{"role": "user", "content": rid}]}
    if temperature is not None:
        body["temperature"] = temperature
    r = httpx.post(gwr.url + "/v1/chat/completions", json=body, timeout=WAIT_S,
                   headers={"Authorization": f"Bearer {key}", "x-request-id": rid})
    assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n"), r.text
    rec = usage_record(redis_server, rid)
    # "hello", 2 reasoning chunks, 3 argument fragments (the call's head has empty arguments)
    assert rec["completion_tokens"] == "6" and rec["estimated"] == "1", rec
