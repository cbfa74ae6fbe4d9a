"""Routing policies end to end: failover on 429/5xx/timeouts, Retry-After,
cooldowns, circuit breakers, streams that fail before/after their first token,
the Anthropic adapter through the official OpenAI SDK, hot reload under load,
and rejected policy files.

Two mocks: provider "a" (mock A) receives the x-mock-* fault headers, provider
"b" (mock B) never does, so a fault hits the primary only. Each test uses its
own upstream model names, so breakers and cooldowns (keyed by provider+model,
shared by every worker) of one test never leak into another.
"""
import json
import os
import signal
import subprocess
import threading
import time
import uuid

import httpx
import openai
import pytest

from conftest import API_KEY, BUILDDIR, Gateway, Mock, wait_until

MSGS = [{"role": "user", "content": "Say hello"}]
ADMIN_TOKEN = "adm-" + "c3" * 16
AUTH = {"Authorization": f"Bearer {API_KEY}"}

ROUTES = [
    {"name": "failover", "match": {"model": "fo-model"},
     "targets": [{"provider": "a", "model": "fo-a"}],
     "fallback": [{"provider": "b", "model": "fo-b"}],
     "retry": {"attempts": 0}, "breaker": {"failures": 0, "error_ratio": 0}},
    {"name": "retry-after", "match": {"model": "ra-model"},
     "targets": [{"provider": "a", "model": "ra-a"}],
     "fallback": [{"provider": "b", "model": "ra-b"}],
     "retry": {"attempts": 1, "respect_retry_after_max_ms": 3000}},
    {"name": "breaker", "match": {"model": "br-model"},
     "targets": [{"provider": "a", "model": "br-a"}],
     "fallback": [{"provider": "b", "model": "br-b"}],
     "retry": {"attempts": 0},
     "breaker": {"failures": 3, "error_ratio": 0, "open_ms": 1000, "half_open_probes": 1}},
    {"name": "stream", "match": {"model": ["st-model", "st-alias"]},
     "targets": [{"provider": "a", "model": "st-a"}],
     "fallback": [{"provider": "b", "model": "st-b"}],
     "timeouts": {"first_token_ms": 700}, "breaker": {"failures": 0, "error_ratio": 0}},
    {"name": "no-fallback-on-400", "match": {"model": "cl-model"},
     "targets": [{"provider": "a", "model": "cl-a"}],
     "fallback": [{"provider": "b", "model": "cl-b"}],
     "fallback_on": ["server_error"], "breaker": {"failures": 0, "error_ratio": 0}},
    {"name": "exhausted", "match": {"model": "ex-model"},
     "targets": [{"provider": "a", "model": "ex-a1"}, {"provider": "a", "model": "ex-a2",
                                                        "weight": 0}],
     "breaker": {"failures": 0, "error_ratio": 0}},
    {"name": "beta-header", "match": {"model": "hd-*", "header": {"name": "x-route", "value": "beta"}},
     "targets": [{"provider": "b"}]},
    {"name": "azure", "match": {"model": "az-model"},
     "targets": [{"provider": "az", "model": "my-deploy"}]},
    {"name": "claude", "match": {"model": "claude-*"},
     "targets": [{"provider": "anth", "model": "claude-3-5-haiku-mock"}]},
    # no fallback and no breaker: an error the upstream reports reaches the client
    {"name": "claude-faults", "match": {"model": "cf-model"},
     "targets": [{"provider": "anth", "model": "cf-anth"}],
     "breaker": {"failures": 0, "error_ratio": 0}},
    {"name": "claude-failover", "match": {"model": "cfo-model"},
     "targets": [{"provider": "anth", "model": "cfo-anth"}],
     "fallback": [{"provider": "b", "model": "cfo-b"}],
     "breaker": {"failures": 0, "error_ratio": 0}},
]


def write_policy(pdir, routes, name="10-routes.json"):
    tmp = pdir / (".tmp-" + name)
    tmp.write_text("// test policy\n" + json.dumps({"routes": routes}, indent=2))
    tmp.replace(pdir / name)


@pytest.fixture(scope="module")
def mocks(tmp_mod):
    a, b = Mock(tmp_mod), Mock(tmp_mod)
    yield a, b
    a.proc.stop()
    b.proc.stop()


def routing_conf(a, b, pdir, watch=True):
    return {
        "policy": {"dir": str(pdir), "watch": watch},
        "providers": {
            "a": {"kind": "openai", "base_url": a.url + "/v1", "forward_headers": "x-mock-*",
                  "first_byte_timeout_ms": 1500, "idle_timeout_ms": 1500},
            "b": {"kind": "openai", "base_url": b.url + "/v1"},
            "anth": {"kind": "anthropic", "base_url": a.url + "/v1", "forward_headers": "x-mock-*",
                     "api_key_env": "LLMGATE_TEST_UPSTREAM_KEY"},
            "az": {"kind": "azure_openai", "base_url": a.url, "api_version": "2024-10-21",
                   "api_key_env": "LLMGATE_TEST_UPSTREAM_KEY"},
        },
    }


@pytest.fixture(scope="module")
def gw(tmp_mod, mocks):
    a, b = mocks
    pdir = tmp_mod / "policies"
    pdir.mkdir(exist_ok=True)
    write_policy(pdir, ROUTES)
    old = os.environ.get("LLMGATE_ADMIN_TOKEN")
    os.environ["LLMGATE_ADMIN_TOKEN"] = ADMIN_TOKEN
    try:
        g = Gateway(tmp_mod, a.url, extra_conf=routing_conf(a, b, pdir), name="routing")
    finally:
        if old is None:
            os.environ.pop("LLMGATE_ADMIN_TOKEN", None)
        else:
            os.environ["LLMGATE_ADMIN_TOKEN"] = old
    g.pdir = pdir
    yield g
    rc = g.proc.stop()
    assert rc == 0, f"gateway exited {rc}:\n{g.proc.output()[-4000:]}"


def chat(gw, model, headers=None, **body):
    return httpx.post(gw.url + "/v1/chat/completions", headers={**AUTH, **(headers or {})},
                      json={"model": model, "messages": MSGS, "max_tokens": 3, **body}, timeout=20)


def served(r):
    return r.headers.get("x-llmgate-provider"), r.headers.get("x-llmgate-model"), \
        int(r.headers.get("x-llmgate-attempts", "-1"))


def policy(gw):
    r = httpx.get(gw.url + "/admin/v1/policy", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 200, r.text
    return r.json()


def target_state(gw, route, model):
    for rt in policy(gw)["routes"]:
        if rt["name"] == route:
            for t in rt["targets"] + rt["fallback"]:
                if t["model"] == model:
                    return t
    raise AssertionError(f"no target {model} in route {route}")


def log_line(gw, rid):
    """The access log line of request rid (its x-request-id)."""
    def find():
        if not gw.access_log.exists():
            return None
        for line in gw.access_log.read_text().splitlines():
            if line.startswith("{") and json.loads(line).get("id") == rid:
                return json.loads(line)
        return None
    return wait_until(find, f"access log line of {rid}")


def metric(gw, name):
    for line in httpx.get(gw.url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return int(line.split()[1])
    raise AssertionError(f"metric {name} missing")


# ------------------------------------------------------------------ failover

def test_plain_models_route_carries_headers(gw):
    r = chat(gw, "mock-model")
    assert r.status_code == 200
    assert served(r) == ("mock", "upstream-model", 1)


def test_429_on_primary_served_by_fallback_and_cooled_down(gw, mocks):
    a, b = mocks
    r = chat(gw, "fo-model", {"x-mock-fault": "429", "x-mock-retry-after": "30"})
    assert r.status_code == 200, r.text
    assert served(r) == ("b", "fo-b", 2)
    assert r.json()["choices"][0]["message"]["content"] == "tok0 tok1 tok2 "
    # the primary advertised 30 s: every worker now skips it without asking
    before = a.stats()["requests"]
    for _ in range(6):
        r = chat(gw, "fo-model")
        assert r.status_code == 200 and served(r) == ("b", "fo-b", 1)
    assert a.stats()["requests"] == before
    assert 25000 < target_state(gw, "failover", "fo-a")["cooldown_ms"] <= 30000


def test_retry_after_honoured_on_the_same_target(gw, mocks):
    key = uuid.uuid4().hex
    t0 = time.monotonic()
    r = chat(gw, "ra-model", {"x-mock-fault": "429", "x-mock-retry-after": "1",
                              "x-mock-fault-key": key, "x-mock-fault-times": "1"})
    elapsed = time.monotonic() - t0
    assert r.status_code == 200, r.text
    assert served(r) == ("a", "ra-a", 2)  # waited out Retry-After, then the primary served
    assert elapsed >= 0.9


def test_client_error_is_not_failed_over(gw, mocks):
    a, b = mocks
    before = b.stats()["requests"]
    r = chat(gw, "cl-model", {"x-mock-fault": "429", "x-mock-retry-after": "60"})
    # rate_limited is not in this route's fallback_on: the client sees the 429 as is
    assert r.status_code == 429 and r.headers["retry-after"] == "60"
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert served(r)[2] == 1
    assert b.stats()["requests"] == before


def test_no_target_left_is_an_error_not_a_200(gw):
    r = chat(gw, "ex-model", {"x-mock-fault": "500"})
    assert r.status_code == 502
    assert served(r) == ("a", "ex-a2", 2)  # both weighted targets were tried


def test_header_route_and_glob(gw):
    r = chat(gw, "hd-anything", {"x-route": "beta"})
    assert r.status_code == 200 and served(r) == ("b", "hd-anything", 1)
    assert chat(gw, "hd-anything").status_code == 404  # header absent: no route


def test_breaker_opens_and_recovers(gw, mocks):
    a, b = mocks
    fault = {"x-mock-fault": "500", "x-mock-fault-model": "br-a"}
    opens0 = metric(gw, "llmgate_fallbacks_total")
    for _ in range(3):
        r = chat(gw, "br-model", fault)
        assert r.status_code == 200 and served(r) == ("b", "br-b", 2)
    assert target_state(gw, "breaker", "br-a")["breaker"] == "open"
    assert metric(gw, "llmgate_fallbacks_total") >= opens0 + 3
    # open: the primary is not even tried
    before = a.stats()["requests"]
    r = chat(gw, "br-model", fault)
    assert r.status_code == 200 and served(r) == ("b", "br-b", 1)
    assert a.stats()["requests"] == before
    # after open_ms a half-open probe goes through; the healthy primary closes it
    wait_until(lambda: served(chat(gw, "br-model"))[0] == "a", "breaker to recover", timeout=10)
    assert target_state(gw, "breaker", "br-a")["breaker"] == "closed"
    assert 'llmgate_breaker_opens_total{provider="a",model="br-a"} 1' in \
        httpx.get(gw.url + "/metrics").text


# ------------------------------------------------------------------ streams

def stream_text(gw, model, headers=None, **kw):
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=API_KEY, max_retries=0,
                           default_headers=headers or {})
    raw = client.chat.completions.with_raw_response.create(model=model, messages=MSGS, max_tokens=4,
                                                           stream=True, **kw)
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    return raw.headers, text


def test_stream_failing_before_first_token_served_by_fallback(gw, mocks):
    for fault in ("500", "reset", "hang"):  # hang: first_token_ms (700) expires
        h, text = stream_text(gw, "st-model", {"x-mock-fault": fault, "x-mock-fault-model": "st-a"})
        assert text == "tok0 tok1 tok2 tok3 ", fault
        assert (h["x-llmgate-provider"], h["x-llmgate-attempts"]) == ("b", "2"), fault


def test_stream_failing_after_first_token_ends_with_error_event(gw, mocks):
    a, b = mocks
    before = b.stats()["requests"]
    got = ""
    with pytest.raises(openai.APIError):
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=API_KEY, max_retries=0,
                               default_headers={"x-mock-fault": "reset-mid-stream"})
        for c in client.chat.completions.create(model="st-alias", messages=MSGS, max_tokens=8,
                                                stream=True):
            if c.choices:
                got += c.choices[0].delta.content or ""
    assert got == "tok0 tok1 tok2 "  # what was sent stays sent; no fallback after it
    assert b.stats()["requests"] == before


# ------------------------------------------------------------------ anthropic

def test_anthropic_plain(gw, mocks):
    a, _ = mocks
    client = gw.client()
    raw = client.chat.completions.with_raw_response.create(
        model="claude-haiku", max_tokens=3, user="u-42",
        messages=[{"role": "system", "content": "Be brief."}, *MSGS], stop=["END"])
    r = raw.parse()
    assert raw.headers["x-llmgate-provider"] == "anth"
    assert r.object == "chat.completion"
    assert r.choices[0].message.content == "tok0 tok1 tok2 "
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 3 and r.usage.total_tokens == r.usage.prompt_tokens + 3
    last = a.stats()["last"]
    assert last["path"] == "/v1/messages"
    assert last["headers"]["x-api-key"] == "sk-upstream-secret"
    assert last["headers"]["anthropic-version"] == "2023-06-01"
    assert "authorization" not in last["headers"]
    body = last["body"]
    assert body["system"] == "Be brief."
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Say hello"}]}]
    assert body["max_tokens"] == 3 and body["stop_sequences"] == ["END"]
    assert body["metadata"] == {"user_id": "u-42"}


def test_anthropic_tools(gw, mocks):
    a, _ = mocks
    tools = [{"type": "function", "function": {"name": "lookup", "description": "d",
                                               "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]
    msgs = [*MSGS,
            {"role": "assistant", "content": None,
             "tool_calls": [{"id": "call_1", "type": "function",
                             "function": {"name": "lookup", "arguments": "{\"q\": \"x\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "found"}]
    r = gw.client().chat.completions.create(model="claude-haiku", messages=msgs, tools=tools,
                                            tool_choice="required", max_tokens=2)
    m = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls"
    assert m.tool_calls[0].function.name == "lookup"
    assert json.loads(m.tool_calls[0].function.arguments) == {"q": "tok0", "n": 1}
    body = a.stats()["last"]["body"]
    assert body["tools"] == [{"name": "lookup", "description": "d",
                              "input_schema": tools[0]["function"]["parameters"]}]
    assert body["tool_choice"] == {"type": "any"}
    assert body["messages"][1] == {"role": "assistant", "content": [
        {"type": "tool_use", "id": "call_1", "name": "lookup", "input": {"q": "x"}}]}
    assert body["messages"][2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "found"}]}


def test_anthropic_streaming(gw):
    h, text = stream_text(gw, "claude-haiku", stream_options={"include_usage": True})
    assert text == "tok0 tok1 tok2 tok3 "
    client = gw.client()
    chunks = list(client.chat.completions.create(model="claude-haiku", messages=MSGS, max_tokens=2,
                                                 stream=True, stream_options={"include_usage": True},
                                                 tools=[{"type": "function", "function": {"name": "f"}}]))
    assert chunks[0].choices[0].delta.role == "assistant"
    calls = [tc for c in chunks if c.choices and c.choices[0].delta.tool_calls
             for tc in c.choices[0].delta.tool_calls]
    assert calls[0].function.name == "f" and calls[0].id.startswith("toolu_")
    assert json.loads("".join(tc.function.arguments or "" for tc in calls)) == {"q": "tok0", "n": 1}
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["tool_calls"]
    assert chunks[-1].usage.completion_tokens == 2 and chunks[-1].choices == []


def test_anthropic_errors_in_openai_shape(gw):
    with pytest.raises(openai.RateLimitError) as ei:
        gw.client(default_headers={"x-mock-fault": "429", "x-mock-retry-after": "0"}).chat.completions.create(
            model="claude-haiku", messages=MSGS)
    assert ei.value.code == "rate_limit_exceeded"
    with pytest.raises(openai.APIStatusError) as ei:
        gw.client(default_headers={"x-mock-fault": "503"}).chat.completions.create(
            model="claude-haiku", messages=MSGS)
    assert ei.value.status_code == 502
    with pytest.raises(openai.APIError):  # a broken Messages stream ends with an error event
        list(gw.client(default_headers={"x-mock-fault": "reset-mid-stream"}).chat.completions.create(
            model="claude-haiku", messages=MSGS, stream=True))


def test_anthropic_overloaded_before_first_token_is_a_503(gw):
    """An error event the upstream sends before anything reached the client is the
    upstream's own report, not a malformed stream: a clean 503 upstream_overloaded."""
    rid = "cf-first-" + uuid.uuid4().hex
    # gw.client() has max_retries=0: the SDK would retry a 503
    client = gw.client(default_headers={"x-mock-fault": "overloaded-stream", "x-request-id": rid})
    with pytest.raises(openai.InternalServerError) as ei:
        client.chat.completions.create(model="cf-model", messages=MSGS, max_tokens=4, stream=True)
    e = ei.value
    assert e.status_code == 503
    assert e.code == "upstream_overloaded" and e.type == "server_error"
    assert "overloaded" in e.message and "malformed" not in e.message
    assert e.response.headers["x-llmgate-provider"] == "anth"
    assert e.response.headers["x-llmgate-attempts"] == "1"  # no fallback took it
    line = log_line(gw, rid)
    assert (line["status"], line["error"]) == (503, "upstream_overloaded")


def test_anthropic_overloaded_mid_stream_ends_with_overloaded_error_event(gw):
    rid = "cf-mid-" + uuid.uuid4().hex
    client = gw.client(default_headers={"x-mock-fault": "overloaded-mid-stream",
                                        "x-request-id": rid})
    got = ""
    with pytest.raises(openai.APIError) as ei:
        for c in client.chat.completions.create(model="cf-model", messages=MSGS, max_tokens=8,
                                                stream=True):
            if c.choices:
                got += c.choices[0].delta.content or ""
    assert got == "tok0 tok1 tok2 "  # what came before the error event was relayed
    e = ei.value
    assert e.code == "upstream_overloaded" and e.type == "server_error"
    assert "overloaded" in e.message and "malformed" not in e.message
    line = log_line(gw, rid)
    assert (line["status"], line["error"]) == (200, "upstream_overloaded")


def test_anthropic_overloaded_before_first_token_fails_over(gw, mocks):
    _, b = mocks
    before = b.stats()["requests"]
    h, text = stream_text(gw, "cfo-model", {"x-mock-fault": "overloaded-stream"})
    assert text == "tok0 tok1 tok2 tok3 "
    assert (h["x-llmgate-provider"], h["x-llmgate-attempts"]) == ("b", "2")
    assert b.stats()["requests"] == before + 1


# ------------------------------------------------------------------ azure

def test_azure_deployment_urls(gw, mocks):
    a, _ = mocks
    r = gw.client().chat.completions.create(model="az-model", messages=MSGS, max_tokens=2)
    assert r.choices[0].message.content == "tok0 tok1 "
    last = a.stats()["last"]
    assert last["path"] == "/openai/deployments/my-deploy/chat/completions"
    assert last["headers"]["api-key"] == "sk-upstream-secret"
    assert "authorization" not in last["headers"]
    h, text = stream_text(gw, "az-model")
    assert text == "tok0 tok1 tok2 tok3 " and h["x-llmgate-provider"] == "az"


# ------------------------------------------------------------------ admin

def test_admin_policy_view(gw):
    assert httpx.get(gw.url + "/admin/v1/policy").status_code == 401
    p = policy(gw)
    assert p["dir"] == str(gw.pdir) and p["files"] == [str(gw.pdir / "10-routes.json")]
    fo = next(rt for rt in p["routes"] if rt["name"] == "failover")
    assert fo["origin"].startswith(str(gw.pdir / "10-routes.json") + ":")
    assert fo["fallback_on"] == ["rate_limited", "overloaded", "server_error", "timeout",
                                 "connect_error"]
    assert any(rt["origin"] == "models" for rt in p["routes"])  # the config's models section


# ------------------------------------------------------------------ reloads

@pytest.fixture
def reload_gw(tmp_path, mocks):
    a, b = mocks
    pdir = tmp_path / "policies"
    pdir.mkdir()
    write_policy(pdir, ROUTES)
    g = Gateway(tmp_path, a.url, extra_conf=routing_conf(a, b, pdir, watch=False), name="reload")
    g.pdir = pdir
    yield g
    rc = g.proc.stop()
    assert rc == 0, f"gateway exited {rc}:\n{g.proc.output()[-4000:]}"


def generation(g):
    return httpx.get(g.url + "/readyz").json()["policy"]["generation"]


def test_100_reloads_under_load_lose_nothing(reload_gw):
    g = reload_gw
    stop = threading.Event()
    results = {"ok": 0, "bad": []}

    def load():
        with httpx.Client(headers=AUTH, timeout=20) as c:
            while not stop.is_set():
                for model, stream in (("fo-model", False), ("st-model", True), ("mock-model", False)):
                    body = {"model": model, "messages": MSGS, "max_tokens": 2, "stream": stream}
                    r = c.post(g.url + "/v1/chat/completions", json=body)
                    text = r.text
                    if r.status_code == 200 and (not stream or text.rstrip().endswith("data: [DONE]")):
                        results["ok"] += 1
                    else:
                        results["bad"].append((r.status_code, text[:200]))

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(100):
            routes = json.loads(json.dumps(ROUTES))
            routes[0]["targets"][0]["weight"] = 1 + i % 7  # a real change each time
            write_policy(g.pdir, routes)
            gen = generation(g)
            g.proc.send(signal.SIGHUP)
            wait_until(lambda: generation(g) > gen, f"reload {i}")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert results["bad"] == []
    assert results["ok"] > 100
    assert metric(g, "llmgate_policy_reloads_total") == 100


def test_invalid_policy_rejected_with_position_while_serving(gw, tmp_path):
    bad = gw.pdir / "20-bad.json"
    bad_text = '{\n  "routes": [\n    { "match": { "model": "x" },\n      "targets": [{"provider": "b", "weight": "heavy"}] }\n  ]\n}\n'
    # llmgate -t names the file, line and column and exits non-zero
    check_dir = tmp_path / "p"
    check_dir.mkdir()
    (check_dir / "20-bad.json").write_text(bad_text)
    conf = json.loads(gw.conf_path.read_text())
    conf["policy"]["dir"] = str(check_dir)
    (tmp_path / "t.conf").write_text(json.dumps(conf))
    t = subprocess.run([str(BUILDDIR / "llmgate"), "-t", "-c", str(tmp_path / "t.conf")],
                       capture_output=True, text=True)
    assert t.returncode != 0
    assert f"{check_dir / '20-bad.json'}:4:47: 'routes[0].targets[0].weight' must be an integer" in t.stderr

    # the running gateway sees the file appear (inotify), rejects it and keeps serving
    failures = metric(gw, "llmgate_policy_reload_failures_total")
    gen = generation(gw)
    tmp = gw.pdir / ".20-bad.json.tmp"
    tmp.write_text(bad_text)
    tmp.replace(bad)
    try:
        wait_until(lambda: metric(gw, "llmgate_policy_reload_failures_total") > failures,
                   "reload rejection")
        detail = httpx.get(gw.url + "/readyz").json()["policy"]
        assert detail["generation"] == gen
        assert detail["last_reload_error"].startswith(f"{bad}:4:47: ")
        r = chat(gw, "fo-model")
        assert r.status_code == 200 and served(r)[0] in ("a", "b")
    finally:
        bad.unlink()
    wait_until(lambda: generation(gw) > gen, "reload after the fix")
    assert httpx.get(gw.url + "/readyz").json()["policy"]["last_reload_error"] is None


def test_example_policies_are_valid_and_reference_current():
    from conftest import SRCDIR
    t = subprocess.run([str(BUILDDIR / "llmgate"), "-t", "-c", "policies/examples/providers.conf"],
                       cwd=SRCDIR, capture_output=True, text=True)
    assert t.returncode == 0, t.stderr
    assert "with policies from policies/examples" in t.stdout
    ref = subprocess.run([str(BUILDDIR / "llmgate"), "--policy-reference"], capture_output=True,
                         text=True, check=True).stdout
    readme = (SRCDIR / "policies" / "README.md").read_text()
    keys = [line.split("|")[1].strip() for line in ref.splitlines() if line.startswith("| `")]
    assert len(keys) > 20
    missing = [k for k in keys if f"| {k} |" not in readme]
    assert not missing, f"policies/README.md lacks {missing}: paste `llmgate --policy-reference`"
