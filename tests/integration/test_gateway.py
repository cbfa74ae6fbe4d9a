"""The gateway core as OpenAI SDK users and curl see it."""
import json
import signal
import subprocess
import threading

import httpx
import openai
import pytest

from conftest import API_KEY, Gateway, Mock, wait_until

MSGS = [{"role": "user", "content": "Say hello"}]


# ------------------------------------------------------------------ happy paths

def test_chat_non_streaming(client, mock):
    r = client.chat.completions.create(model="mock-model", messages=MSGS, max_tokens=5)
    assert r.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4 "
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 5
    # the upstream saw the mapped model name and the provider's key, not the client's
    last = mock.stats()["last"]
    assert last["model"] == "upstream-model"
    assert last["authorization"] == "Bearer sk-upstream-secret"


def test_chat_streaming_with_usage(client):
    stream = client.chat.completions.create(model="mock-model", messages=MSGS, max_tokens=4, stream=True,
                                            stream_options={"include_usage": True})
    text, usage, finish = "", None, None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert text == "tok0 tok1 tok2 tok3 "
    assert finish == "length"
    assert usage is not None and usage.completion_tokens == 4


def test_stream_headers_and_framing(gateway):
    with httpx.stream("POST", gateway.url + "/v1/chat/completions",
                      headers={"Authorization": f"Bearer {API_KEY}"},
                      json={"model": "mock-model", "messages": MSGS, "stream": True, "max_tokens": 2}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache"
        assert r.headers["x-accel-buffering"] == "no"
        body = r.read().decode()
    events = [e for e in body.split("\n\n") if e.strip()]
    assert events[-1] == "data: [DONE]"
    for e in events[:-1]:
        assert e.startswith("data: ")
        json.loads(e[6:])


def test_completions(client):
    r = client.completions.create(model="mock-model", prompt="Once upon", max_tokens=3)
    assert r.choices[0].text == "tok0 tok1 tok2 "
    chunks = list(client.completions.create(model="mock-model", prompt="x", max_tokens=2, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "tok0 tok1 "


def test_embeddings(client):
    r = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(r.data) == 2 and len(r.data[0].embedding) == 8
    assert r.data[0].embedding != r.data[1].embedding


def test_models_list(client):
    ids = sorted(m.id for m in client.models.list())
    assert ids == ["mock-model", "text-embedding-3-small"]


def test_unknown_fields_forwarded_verbatim(client, mock):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    client.chat.completions.create(model="mock-model", messages=MSGS, tools=tools,
                                   response_format={"type": "json_object"}, logprobs=True,
                                   extra_body={"vendor_knob": {"a": [1, 2.5, None]}})
    body = mock.stats()["last"]["body"]
    assert body["tools"] == tools
    assert body["response_format"] == {"type": "json_object"}
    assert body["logprobs"] is True
    assert body["vendor_knob"] == {"a": [1, 2.5, None]}


def test_request_id_echoed_and_forwarded(gateway, mock):
    r = httpx.post(gateway.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {API_KEY}",
                   "x-request-id": "client-id-42"}, json={"model": "mock-model", "messages": MSGS})
    assert r.headers["x-request-id"] == "client-id-42"
    assert mock.stats()["last"]["x_request_id"] == "client-id-42"
    r = httpx.post(gateway.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"},
                   json={"model": "mock-model", "messages": MSGS})
    rid = r.headers["x-request-id"]
    assert rid.startswith("req_") and mock.stats()["last"]["x_request_id"] == rid


def test_health_and_ready(gateway):
    assert httpx.get(gateway.url + "/healthz").json() == {"status": "ok"}
    ready = wait_until(lambda: httpx.get(gateway.url + "/readyz").status_code == 200 and
                       httpx.get(gateway.url + "/readyz"), "readyz 200")
    assert ready.json()["providers"] == {"mock": "reachable"}


# ------------------------------------------------------------------ errors as the SDK sees them

def test_bad_key(gateway):
    with pytest.raises(openai.AuthenticationError) as ei:
        gateway.client(key="sk-wrong").chat.completions.create(model="mock-model", messages=MSGS)
    assert ei.value.code == "invalid_api_key"
    r = httpx.post(gateway.url + "/v1/chat/completions", json={"model": "mock-model", "messages": MSGS})
    assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"


def test_invalid_requests(client, gateway):
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="mock-model", messages="not-a-list")
    assert ei.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="mock-model", messages=MSGS, temperature=7)
    assert ei.value.param == "temperature"
    h = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    for body, param in [('{"model": "mock-model", "messages": [', None),
                        ('{"messages": []}', "model"),
                        ('{"model": "mock-model"}', "messages"),
                        ('{"model": "mock-model", "messages": [{"role": "wizard", "content": "x"}]}',
                         "messages[0].role"),
                        ('{"model": "mock-model", "messages": [], "max_tokens": 1e999}', None),
                        ('[1,2]', None)]:
        r = httpx.post(gateway.url + "/v1/chat/completions", content=body, headers=h)
        assert r.status_code == 400, body
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and err["message"]
        if param:
            assert err["param"] == param, body


def test_deep_nesting_is_400(gateway):
    body = '{"model":"mock-model","messages":[{"role":"user","content":"x"}],"x":' + "[" * 5000 + "]" * 5000 + "}"
    r = httpx.post(gateway.url + "/v1/chat/completions", content=body,
                   headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 400


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as ei:
        client.chat.completions.create(model="gpt-nope", messages=MSGS)
    assert ei.value.code == "model_not_found"


def test_unknown_path_and_method(gateway):
    h = {"Authorization": f"Bearer {API_KEY}"}
    r = httpx.get(gateway.url + "/v1/chat/completions", headers=h)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json()["error"]["code"] == "method_not_allowed"
    r = httpx.post(gateway.url + "/v1/nothing-here", headers=h, json={})
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"


def test_body_over_limit_is_413(gateway):
    big = json.dumps({"model": "mock-model", "messages": [{"role": "user", "content": "x" * 70000}]})
    r = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", "-H",
                        f"Authorization: Bearer {API_KEY}", "--data-binary", "@-",
                        gateway.url + "/v1/chat/completions"], input=big.encode(), capture_output=True)
    body, status = r.stdout.decode().rsplit("\n", 1)
    assert status == "413"
    err = json.loads(body)["error"]
    assert err["code"] == "request_too_large" and "65536" in err["message"]
    with pytest.raises(openai.APIStatusError) as ei:
        gateway.client().chat.completions.create(model="mock-model",
                                                 messages=[{"role": "user", "content": "x" * 70000}])
    assert ei.value.status_code == 413


def test_malformed_http_gets_json_400(gateway):
    import socket
    with socket.create_connection(("127.0.0.1", gateway.port)) as s:
        s.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 400")
    assert json.loads(body)["error"]["type"] == "invalid_request_error"


def _read_response(f):
    """One HTTP/1.x response from a socket file: (status, headers, body)."""
    status = int(f.readline().split()[1])
    headers = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        k, v = line.decode().split(":", 1)
        headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while (n := int(f.readline().split(b";")[0], 16)) > 0:
            body += f.read(n)
            f.readline()
        f.readline()
    elif "content-length" in headers:
        body = f.read(int(headers["content-length"]))
    else:  # HTTP/1.0 without keep-alive: the body runs to the close
        body = f.read()
    return status, headers, body


def test_pipelined_requests_answered_in_order_on_one_connection(gateway, mock):
    """Replies leave as soon as they are ready (server_write_now): several
    requests sent in one write still get their answers in order, whole, on one
    kept-alive connection, whatever mix of endpoints and stages answers them."""
    import socket
    chat = json.dumps({"model": "mock-model", "messages": MSGS}).encode()
    auth = f"Authorization: Bearer {API_KEY}\r\n".encode()
    reqs = [b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\n" + auth +
            b"Content-Type: application/json\r\nContent-Length: " + str(len(chat)).encode() + b"\r\n\r\n" + chat,
            b"GET /v1/models HTTP/1.1\r\nHost: t\r\n" + auth + b"\r\n",
            b"GET /v1/nothing-here HTTP/1.1\r\nHost: t\r\n" + auth + b"\r\n",
            b"GET /v1/models HTTP/1.1\r\nHost: t\r\n" + auth + b"Connection: close\r\n\r\n"]
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as s:
        s.sendall(b"".join(reqs))
        f = s.makefile("rb")
        got = [_read_response(f) for _ in reqs]
        assert f.read() == b""  # closed after the last, as it asked; nothing extra
    assert [g[0] for g in got] == [200, 200, 200, 404, 200]
    assert json.loads(got[1][2])["choices"][0]["message"]["content"]
    assert json.loads(got[3][2])["error"]["code"] == "unknown_url"
    assert [m["id"] for m in json.loads(got[2][2])["data"]] == \
        [m["id"] for m in json.loads(got[4][2])["data"]]
    ids = [g[1].get("x-request-id") for g in got[1:]]
    assert all(ids) and len(set(ids)) == len(ids)


def test_http10_reply_closes_connection(gateway):
    import socket
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as s:
        s.sendall(b"GET /v1/models HTTP/1.0\r\nAuthorization: Bearer " + API_KEY.encode() + b"\r\n\r\n")
        f = s.makefile("rb")
        status, headers, body = _read_response(f)  # reads to the close
    assert status == 200 and json.loads(body)["object"] == "list"


@pytest.mark.parametrize("fault,status,exc", [("500", 502, openai.APIStatusError),
                                              ("503", 502, openai.APIStatusError),
                                              ("malformed", 502, openai.APIStatusError),
                                              ("reset", 502, openai.APIStatusError),
                                              ("hang", 504, openai.APIStatusError)])
def test_upstream_failures_map(client, fault, status, exc):
    with pytest.raises(exc) as ei:
        client.chat.completions.create(model="mock-model", messages=MSGS, extra_headers={"x-mock-fault": fault})
    assert ei.value.status_code == status
    assert ei.value.body["type"] in ("upstream_error", "timeout")


def test_upstream_429_passes_through_with_retry_after(client):
    with pytest.raises(openai.RateLimitError) as ei:
        client.chat.completions.create(model="mock-model", messages=MSGS,
                                       extra_headers={"x-mock-fault": "429", "x-mock-retry-after": "7"})
    assert ei.value.response.headers["retry-after"] == "7"


@pytest.mark.parametrize("fault", ["reset-mid-stream", "no-done", "malformed", "hang-mid-stream"])
def test_stream_breaking_midway_reaches_sdk_as_error(client, fault):
    stream = client.chat.completions.create(model="mock-model", messages=MSGS, stream=True, max_tokens=50,
                                            extra_headers={"x-mock-fault": fault})
    got = []
    with pytest.raises(openai.APIError):
        for chunk in stream:
            got.append(chunk)
    assert len(got) >= 1  # some content arrived before the break


def test_stream_failing_before_first_event_is_http_error(client):
    with pytest.raises(openai.APIStatusError) as ei:
        client.chat.completions.create(model="mock-model", messages=MSGS, stream=True,
                                       extra_headers={"x-mock-fault": "hang"})
    assert ei.value.status_code == 504


# ------------------------------------------------------------------ cancellation and backpressure

def _cancelled(mock):
    return mock.stats()["cancelled"]


def test_client_disconnect_mid_stream_cancels_upstream(gateway, mock):
    before = _cancelled(mock)
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", headers={
            "Authorization": f"Bearer {API_KEY}", "x-mock-interval-ms": "50", "x-mock-tokens": "100000"},
            json={"model": "mock-model", "messages": MSGS, "stream": True}) as r:
        it = r.iter_lines()
        assert next(it).startswith("data: ")
    # leaving the block closed the connection mid-stream
    wait_until(lambda: _cancelled(mock) > before, "mock to see the cancelled stream")
    wait_until(lambda: mock.stats()["in_flight"] == 0, "no upstream request left in flight")


def test_client_disconnect_while_waiting_cancels_upstream(gateway, mock):
    before = _cancelled(mock)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gateway.url + "/v1/chat/completions", timeout=0.5, headers={
            "Authorization": f"Bearer {API_KEY}", "x-mock-fault": "hang"},
            json={"model": "mock-model", "messages": MSGS})
    wait_until(lambda: _cancelled(mock) > before, "mock to see the cancelled request")


def test_client_reset_while_waiting_cancels_upstream(gateway, mock):
    """A client that resets its connection (RST, not FIN) while its request waits on the
    upstream is seen gone at once: logged 499, upstream cancelled. The reset used to go
    unnoticed (the worker spinning on it) until the upstream timed out, logged 504."""
    import socket
    import struct
    before = _cancelled(mock)
    body = json.dumps({"model": "mock-model", "messages": MSGS}).encode()
    s = socket.create_connection(("127.0.0.1", gateway.port))
    s.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
               f"Authorization: Bearer {API_KEY}\r\nx-mock-fault: hang\r\n"
               f"x-request-id: reset-1\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
    wait_until(lambda: mock.stats()["in_flight"] > 0, "the request upstream")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    wait_until(lambda: _cancelled(mock) > before, "mock to see the cancelled request")

    def logged():
        for line in gateway.access_log.read_text().splitlines():
            e = json.loads(line)
            if e["id"] == "reset-1":
                return e
    e = wait_until(logged, "the access log line")
    assert e["status"] == 499, e


def test_slow_reader_bounds_gateway_memory(gateway, mock):
    """A client that does not read pauses the upstream instead of buffering the whole stream."""
    import socket

    def rss_kb():
        with open(f"/proc/{gateway.proc.p.pid}/status") as f:
            return int(next(l for l in f if l.startswith("VmRSS")).split()[1])

    seen = mock.stats()["requests"]
    s = socket.create_connection(("127.0.0.1", gateway.port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    body = json.dumps({"model": "mock-model", "messages": MSGS, "stream": True}).encode()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Authorization: Bearer " + API_KEY.encode() + b"\r\nx-mock-tokens: 400000\r\n"
              b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    s.recv(1024)  # the stream started; now stop reading
    base = rss_kb()
    # The mock writes its 400k chunks (~100 MB of SSE) as fast as loopback takes them;
    # without backpressure the gateway would pull all of it into memory within the
    # sampling window below.
    wait_until(lambda: mock.stats()["requests"] > seen, "stream reached the mock")
    samples = []
    for _ in range(20):
        samples.append(rss_kb())
        threading.Event().wait(0.05)
    s.close()
    # 64 MiB leaves room for ASan's quarantine; without backpressure it grows by >200 MiB.
    assert max(samples) - base < 64 * 1024, f"RSS grew from {base} kB to {max(samples)} kB"
    wait_until(lambda: mock.stats()["in_flight"] == 0, "upstream cancelled after close")


# ------------------------------------------------------------------ logs, reload, shutdown

def test_access_log_has_no_secrets(gateway, client):
    secret_prompt = "my-very-secret-prompt-text"
    client.chat.completions.create(model="mock-model", messages=[{"role": "user", "content": secret_prompt}])
    wait_until(lambda: gateway.access_log.exists() and gateway.access_log.read_text().count("\n") > 0,
               "access log lines")
    text = gateway.access_log.read_text() + gateway.proc.output()
    assert secret_prompt not in text and API_KEY not in text and "sk-upstream-secret" not in text
    line = json.loads(text.strip().splitlines()[-1]) if text.strip().splitlines()[-1].startswith("{") else None
    lines = [json.loads(l) for l in gateway.access_log.read_text().splitlines()]
    assert {"time", "id", "status", "model", "provider", "stream", "bytes_in", "bytes_out", "total_ms",
            "upstream_ms"} <= set(lines[-1])
    assert line is None or line["status"] == 200


def test_sighup_reload_good_and_bad(tmp_path, mock):
    g = Gateway(tmp_path, mock.url, name="reload")
    try:
        c = g.client()
        with pytest.raises(openai.NotFoundError):
            c.chat.completions.create(model="added-later", messages=MSGS)
        conf = json.loads(json.dumps(g.conf))
        conf["models"]["added-later"] = {"provider": "mock"}
        g.write_conf(conf)
        g.proc.send(signal.SIGHUP)
        wait_until(lambda: "configuration reloaded" in g.proc.output(), "reload log line")
        wait_until(lambda: _model_ok(c, "added-later"), "new model served")
        # a broken file is rejected with file:line:col and the old config keeps serving
        g.write_conf(None, raw='{\n  "listen": {"port": 1},\n  "models": { oops }\n}\n')
        g.proc.send(signal.SIGHUP)
        wait_until(lambda: "reload rejected" in g.proc.output(), "reload rejection")
        assert f"{g.conf_path}:3:" in g.proc.output()
        assert c.chat.completions.create(model="added-later", messages=MSGS).choices
    finally:
        assert g.proc.stop() == 0


def _model_ok(c, model):
    try:
        c.chat.completions.create(model=model, messages=MSGS)
        return True
    except openai.NotFoundError:
        return False


def test_sigterm_drains_in_flight_requests(tmp_path, mock):
    g = Gateway(tmp_path, mock.url, name="drain")
    result = {}

    def slow():
        try:
            r = g.client().chat.completions.create(model="mock-model", messages=MSGS,
                                                   extra_headers={"x-mock-latency-ms": "600"})
            result["content"] = r.choices[0].message.content
        except Exception as e:  # noqa: BLE001 - reported below
            result["error"] = repr(e)

    before = mock.stats()["in_flight"]
    t = threading.Thread(target=slow)
    t.start()
    wait_until(lambda: mock.stats()["in_flight"] > before, "slow request reached the mock")
    g.proc.send(signal.SIGTERM)
    t.join(30)
    assert result.get("content", "").startswith("tok0"), result
    assert g.proc.stop() == 0
    assert "draining" in g.proc.output()


def test_config_check_mode(tmp_path):
    from conftest import BUILDDIR
    bad = tmp_path / "bad.conf"
    bad.write_text('{\n  "listen": {"port": "eighty"},\n  "models": {}\n}\n')
    r = subprocess.run([str(BUILDDIR / "llmgate"), "-t", "-c", str(bad)], capture_output=True, text=True)
    assert r.returncode != 0
    assert f"{bad}:2:22:" in r.stderr
    from conftest import SRCDIR
    r = subprocess.run([str(BUILDDIR / "llmgate"), "-t", "-c", str(SRCDIR / "conf/llmgate.conf")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(BUILDDIR / "llmgate"), "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("llmgate ")
