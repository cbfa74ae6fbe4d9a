"""The Redis response cache against a real redis-server and the mock upstream.

Hit/miss/bypass/coalesced headers; the OpenAI SDK gets identical content from a
hit, streamed or not; tenants never share entries unless a route says so;
errors, broken streams and non-deterministic requests are never cached; 50
concurrent identical requests reach the mock once; a corrupt entry is a miss;
Redis killed mid-run means bypass (one log line) and the cache comes back.
The per-worker L1 (cache.l1_bytes) answers repeated hits without Redis: a
no-cache refresh replaces its answer, its hits are metered like Redis hits, and
its pre-rendered SSE equals the Redis path's; tests of the Redis path itself run
on a gateway with the L1 off.
Every request uses its own prompt, so tests do not see each other's entries.
Conditions are polled with deadlines, never slept on.
"""
import json
import os
import re
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from conftest import API_KEY, Gateway, RedisServer, raw_post, script_waiting, wait_until

ADMIN = "admin-token-for-tests-0123456789"
os.environ["LLMGATE_ADMIN_TOKEN"] = ADMIN

POLICY = {
    "routes": [
        {"name": "shared", "match": {"model": "shared-model"},
         "targets": [{"provider": "mock", "model": "upstream-model"}],
         "cache": {"scope": "shared", "mode": "always", "ttl_s": 600}},
        {"name": "never", "match": {"model": "never-model"},
         "targets": [{"provider": "mock", "model": "upstream-model"}],
         "cache": {"mode": "never"}},
        {"name": "charged", "match": {"model": "charged-model"},
         "targets": [{"provider": "mock", "model": "upstream-model"}],
         "cache": {"charge_tokens": True}},
    ]
}


def cache_conf(redis, tmp, name, **cache):
    pdir = tmp / f"{name}-policies"
    pdir.mkdir(exist_ok=True)
    (pdir / "cache.json").write_text(json.dumps(POLICY))
    return {"redis": {"port": redis.port, "command_timeout_ms": 500},
            "auth": {"redis_keys": True}, "usage": {"spool_path": str(tmp / f"{name}.spool")},
            "policy": {"dir": str(pdir), "watch": False}, "cache": cache}


@pytest.fixture(scope="module")
def gw(tmp_mod, mock, redis_server):
    g = Gateway(tmp_mod, mock.url, extra_conf=cache_conf(redis_server, tmp_mod, "gwc"), name="gwc")
    yield g
    assert g.proc.stop() == 0, g.proc.output()[-4000:]


@pytest.fixture(scope="module")
def gw_redis_only(tmp_mod, mock, redis_server):
    """The same cache without the L1: every lookup reads Redis."""
    g = Gateway(tmp_mod, mock.url, name="gwc-nol1",
                extra_conf=cache_conf(redis_server, tmp_mod, "gwc-nol1", l1_bytes=0))
    yield g
    assert g.proc.stop() == 0, g.proc.output()[-4000:]


@pytest.fixture(scope="module")
def gw1(tmp_mod, mock, redis_server):
    """One worker (every request meets the same L1) that keeps entries for a minute."""
    g = Gateway(tmp_mod, mock.url, workers=1, name="gwc-l1",
                extra_conf=cache_conf(redis_server, tmp_mod, "gwc-l1", l1_ttl_ms=60000))
    yield g
    assert g.proc.stop() == 0, g.proc.output()[-4000:]


def metrics(gw):
    text = httpx.get(gw.url + "/metrics", timeout=5).text
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"^(llmgate_cache_\w+) (\d+)$", text, re.M)}


def msgs():
    return [{"role": "user", "content": "cache test " + uuid.uuid4().hex}]


def upstream_count(mock):
    """Generation requests the mock served (health probes of /v1/models do not count)."""
    p = mock.stats()["paths"]
    return p["/v1/chat/completions"] + p["/v1/completions"]


def ask(gw, messages, key=API_KEY, headers=None, **kw):
    """One chat request through httpx: (status, headers, parsed body or SSE text)."""
    body = {"model": "mock-model", "messages": messages, "temperature": 0, **kw}
    r = httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=30,
                   headers={"Authorization": f"Bearer {key}", **(headers or {})})
    return r


def ok_records(redis, key_id):
    """The usage records of key_id's successful requests, oldest first."""
    out = []
    for _id, f in redis.cmd("XRANGE", "llmgate:usage", "-", "+"):
        d = dict(zip(f[::2], f[1::2]))
        if d["key_id"] == key_id and d["status"] == "200":
            out.append(d)
    return out


def sse_events(text):
    assert text.endswith("data: [DONE]\n\n"), text[-200:]
    return [json.loads(e[6:]) for e in text.split("\n\n") if e.startswith("data: {")]


def admin(gw, method, path, body=None):
    return httpx.request(method, gw.url + "/admin/v1/" + path, json=body, timeout=10,
                         headers={"Authorization": f"Bearer {ADMIN}"})


def make_key(gw, tenant, **spec):
    r = admin(gw, "POST", "tenants", {"id": tenant, "limits": {}})
    assert r.status_code in (201, 409), r.text
    r = admin(gw, "POST", "keys", {"tenant": tenant, **spec})
    assert r.status_code == 201, r.text
    return r.json()


# ------------------------------------------------------------------ hit / miss / bypass

def test_miss_then_hit_buffered(gw, mock):
    m = msgs()
    n0 = upstream_count(mock)
    a = ask(gw, m, max_tokens=5)
    assert a.status_code == 200 and a.headers["x-llmgate-cache"] == "miss"
    b = ask(gw, m, max_tokens=5)
    assert b.status_code == 200 and b.headers["x-llmgate-cache"] == "hit"
    assert b.content == a.content  # byte for byte
    assert b.headers["content-type"].startswith("application/json")
    assert upstream_count(mock) == n0 + 1
    # an output-affecting parameter is another entry
    c = ask(gw, m, max_tokens=6)
    assert c.headers["x-llmgate-cache"] == "miss"
    # irrelevant ones are not
    d = ask(gw, m, max_tokens=5, user="someone-else")
    assert d.headers["x-llmgate-cache"] == "hit"
    assert upstream_count(mock) == n0 + 2


def durations(gw):
    """llmgate_request_duration_seconds: {(source, le): count} plus {(source, "count"): n}."""
    text = httpx.get(gw.url + "/metrics", timeout=5).text
    out = {(m.group(1), m.group(2)): int(m.group(3)) for m in re.finditer(
        r'^llmgate_request_duration_seconds_bucket\{source="(\w+)",le="([^"]+)"\} (\d+)$',
        text, re.M)}
    for m in re.finditer(r'^llmgate_request_duration_seconds_count\{source="(\w+)"\} (\d+)$',
                         text, re.M):
        out[(m.group(1), "count")] = int(m.group(2))
    return out


def test_request_durations_by_source(gw, mock):
    """The gateway-time histogram counts each request once, under where its answer came
    from; cumulative buckets end at the count."""
    before = durations(gw)
    m = msgs()
    assert ask(gw, m, max_tokens=5).headers["x-llmgate-cache"] == "miss"
    assert ask(gw, m, max_tokens=5).headers["x-llmgate-cache"] == "hit"
    assert ask(gw, m, max_tokens=5, stream=True).headers["x-llmgate-cache"] == "hit"
    assert ask(gw, m, key="not-a-key").status_code == 401
    after = durations(gw)
    for src, n in (("cache", 2), ("upstream", 1), ("gateway", 1)):
        assert after[(src, "count")] - before[(src, "count")] == n, src
        assert after[(src, "+Inf")] == after[(src, "count")]
        assert after[(src, "0.0001")] <= after[(src, "0.001")] <= after[(src, "+Inf")]


def test_event_loop_lag_is_sampled(gw):
    """Each worker's 20 ms lag probe feeds llmgate_event_loop_lag_seconds."""
    def lag():
        text = httpx.get(gw.url + "/metrics", timeout=5).text
        count = int(re.search(r"^llmgate_event_loop_lag_seconds_count (\d+)$", text, re.M)[1])
        inf = int(re.search(r'^llmgate_event_loop_lag_seconds_bucket\{le="\+Inf"\} (\d+)$',
                            text, re.M)[1])
        return count, inf
    first = lag()[0]
    count, inf = wait_until(lambda: lag()[0] > first + 5 and lag(), "lag probe ticks")
    assert inf >= count - 2  # a scrape may land between a bucket and the count


def test_sdk_gets_identical_content_streamed_and_not(gw, mock):
    client = gw.client()
    m = msgs()
    n0 = upstream_count(mock)
    # streamed miss: assembled as it passes, stored once complete
    raw = client.chat.completions.with_raw_response.create(
        model="mock-model", messages=m, temperature=0, max_tokens=7, stream=True)
    assert raw.headers["x-llmgate-cache"] == "miss"
    live = list(raw.parse())
    live_text = "".join(c.choices[0].delta.content or "" for c in live if c.choices)
    live_finish = [c.choices[0].finish_reason for c in live if c.choices][-1]
    assert live_text and live_finish == "length"
    # streamed hit: proper chunks, same content
    raw = client.chat.completions.with_raw_response.create(
        model="mock-model", messages=m, temperature=0, max_tokens=7, stream=True,
        stream_options={"include_usage": True})
    assert raw.headers["x-llmgate-cache"] == "hit"
    assert raw.headers["content-type"].startswith("text/event-stream")
    hit = list(raw.parse())
    assert hit[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in hit if c.choices) == live_text
    assert [c.choices[0].finish_reason for c in hit if c.choices][-1] == "length"
    assert hit[-1].usage and hit[-1].usage.completion_tokens == 7 and not hit[-1].choices
    assert all(c.id == hit[0].id and c.object == "chat.completion.chunk" for c in hit)
    # non-streamed hit of the streamed answer
    raw = client.chat.completions.with_raw_response.create(
        model="mock-model", messages=m, temperature=0, max_tokens=7)
    assert raw.headers["x-llmgate-cache"] == "hit"
    r = raw.parse()
    assert r.choices[0].message.content == live_text
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 7
    assert upstream_count(mock) == n0 + 1

    # the other way round: a buffered miss replayed as a stream, without usage
    m2 = msgs()
    r = client.chat.completions.create(model="mock-model", messages=m2, temperature=0,
                                       max_tokens=4)
    raw = client.chat.completions.with_raw_response.create(
        model="mock-model", messages=m2, temperature=0, max_tokens=4, stream=True)
    assert raw.headers["x-llmgate-cache"] == "hit"
    chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == r.choices[0].message.content
    assert all(c.usage is None for c in chunks)
    assert upstream_count(mock) == n0 + 2


def test_completions_endpoint_cached(gw, mock):
    client = gw.client()
    p = "complete " + uuid.uuid4().hex
    n0 = upstream_count(mock)
    a = client.completions.create(model="mock-model", prompt=p, max_tokens=3, seed=7)
    raw = client.completions.with_raw_response.create(model="mock-model", prompt=p, max_tokens=3,
                                                      seed=7, stream=True)
    assert raw.headers["x-llmgate-cache"] == "hit"
    assert "".join(c.choices[0].text for c in raw.parse()) == a.choices[0].text
    assert upstream_count(mock) == n0 + 1


def test_non_deterministic_and_policy_bypass(gw, mock):
    m = msgs()
    n0 = upstream_count(mock)
    for _ in range(2):
        r = httpx.post(gw.url + "/v1/chat/completions", timeout=30,
                       headers={"Authorization": f"Bearer {API_KEY}"},
                       json={"model": "mock-model", "messages": m, "max_tokens": 2})
        assert r.headers["x-llmgate-cache"] == "bypass"
    for _ in range(2):
        r = ask(gw, m, max_tokens=2, model="never-model")
        assert r.status_code == 200 and r.headers["x-llmgate-cache"] == "bypass"
    assert upstream_count(mock) == n0 + 4
    # mode always: cached without temperature 0
    m2 = msgs()
    for want in ("miss", "hit"):
        r = httpx.post(gw.url + "/v1/chat/completions", timeout=30,
                       headers={"Authorization": f"Bearer {API_KEY}"},
                       json={"model": "shared-model", "messages": m2, "temperature": 1.3})
        assert r.headers["x-llmgate-cache"] == want


def test_cache_control(gw, mock):
    m = msgs()
    n0 = upstream_count(mock)
    assert ask(gw, m, headers={"Cache-Control": "no-store"}).headers["x-llmgate-cache"] == "bypass"
    assert ask(gw, m).headers["x-llmgate-cache"] == "miss"  # no-store wrote nothing
    assert ask(gw, m).headers["x-llmgate-cache"] == "hit"
    assert ask(gw, m, headers={"Cache-Control": "no-cache"}).headers["x-llmgate-cache"] == "miss"
    assert ask(gw, m, headers={"Cache-Control": "max-age=0"}).headers["x-llmgate-cache"] == "miss"
    h = ask(gw, m, headers={"Cache-Control": "max-age=3600"})
    assert h.headers["x-llmgate-cache"] == "hit" and int(h.headers["age"]) >= 0
    assert upstream_count(mock) == n0 + 4


# ------------------------------------------------------------------ tenants

def test_no_cross_tenant_hit(gw, mock, redis_server):
    ka = make_key(gw, "cache-a")["key"]
    kb = make_key(gw, "cache-b")["key"]
    m = msgs()
    assert ask(gw, m, key=ka).headers["x-llmgate-cache"] == "miss"
    assert ask(gw, m, key=ka).headers["x-llmgate-cache"] == "hit"
    assert ask(gw, m, key=kb).headers["x-llmgate-cache"] == "miss"
    assert ask(gw, m).headers["x-llmgate-cache"] == "miss"  # static keys are their own scope
    assert redis_server.cmd("KEYS", "llmgate:rc:{cache-a}:*")
    assert redis_server.cmd("KEYS", "llmgate:rc:{cache-b}:*")
    # a shared-scope route serves every tenant from one entry
    m2 = msgs()
    assert ask(gw, m2, key=ka, model="shared-model").headers["x-llmgate-cache"] == "miss"
    assert ask(gw, m2, key=kb, model="shared-model").headers["x-llmgate-cache"] == "hit"


def test_hit_is_metered_without_upstream_cost(gw, redis_server):
    k = make_key(gw, "cache-meter", limits={"rpm": 2, "tpm": 100000})
    m = msgs()
    assert ask(gw, m, key=k["key"], max_tokens=5).headers["x-llmgate-cache"] == "miss"
    h = ask(gw, m, key=k["key"], max_tokens=5)
    assert h.headers["x-llmgate-cache"] == "hit"
    # the hit counted as a request: the third one is over 2 per minute
    assert ask(gw, m, key=k["key"], max_tokens=5).status_code == 429

    miss, hit = wait_until(lambda: len(ok_records(redis_server, k["id"])) == 2 and
                           ok_records(redis_server, k["id"]), "two usage records")
    assert miss["cached_tokens"] == "0" and hit["completion_tokens"] == "5"
    assert int(hit["cached_tokens"]) == int(hit["prompt_tokens"]) + 5
    assert hit["cost_microusd"] == "0" and hit["status"] == "200"


# ------------------------------------------------------------------ never cached

def test_errors_and_broken_streams_never_cached(gw, mock):
    m = msgs()
    n0 = upstream_count(mock)
    for fault, status in (("500", 502), ("429", 429), ("malformed", 502)):
        for _ in range(2):
            r = ask(gw, m, headers={"x-mock-fault": fault})
            assert r.status_code == status, (fault, r.text)
            assert r.headers.get("x-llmgate-cache") == "miss"
    assert upstream_count(mock) == n0 + 6
    # a stream that broke after it started, twice: both reach the mock
    for _ in range(2):
        r = ask(gw, m, stream=True, headers={"x-mock-fault": "reset-mid-stream"})
        assert r.status_code == 200 and "event: error" in r.text
    for _ in range(2):
        r = ask(gw, m, stream=True, headers={"x-mock-fault": "no-done"})
        assert "event: error" in r.text
    assert upstream_count(mock) == n0 + 10


def test_client_leaving_mid_stream_stores_nothing(gw, mock):
    m = msgs()
    n0 = upstream_count(mock)
    hdr = {"x-mock-tokens": "40", "x-mock-interval-ms": "20"}
    with httpx.stream("POST", gw.url + "/v1/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {API_KEY}", **hdr},
                      json={"model": "mock-model", "messages": m, "temperature": 0,
                            "stream": True}) as r:
        for line in r.iter_lines():
            if "tok1 " in line:
                break  # leave mid-stream
    wait_until(lambda: mock.stats()["in_flight"] == 0, "the upstream stream cancelled")
    r = ask(gw, m, stream=True, headers=hdr)
    assert r.headers["x-llmgate-cache"] == "miss"
    assert upstream_count(mock) == n0 + 2


# ------------------------------------------------------------------ single flight

def test_fifty_identical_requests_reach_the_mock_once(gw, mock):
    m = msgs()
    hdr = {"Authorization": f"Bearer {API_KEY}", "x-mock-latency-ms": "400"}
    n0 = upstream_count(mock)
    http = httpx.Client(limits=httpx.Limits(max_connections=64), timeout=30)

    def one(i):
        body = {"model": "mock-model", "messages": m, "temperature": 0, "max_tokens": 6,
                "stream": i % 2 == 1}
        r = http.post(gw.url + "/v1/chat/completions", json=body, headers=hdr)
        assert r.status_code == 200, r.text
        text = (r.json()["choices"][0]["message"]["content"] if i % 2 == 0 else
                "".join(c["choices"][0]["delta"].get("content") or ""
                        for c in sse_events(r.text) if c["choices"]))
        return r.headers["x-llmgate-cache"], text

    with ThreadPoolExecutor(max_workers=50) as ex:
        results = list(ex.map(one, range(50)))
    http.close()
    assert upstream_count(mock) == n0 + 1
    states = [s for s, _ in results]
    assert states.count("miss") == 1, states
    assert set(states) <= {"miss", "coalesced", "hit"}, states
    assert len({t for _, t in results}) == 1  # everyone got the same answer
    text = httpx.get(gw.url + "/metrics", timeout=5).text
    coalesced = int(re.search(r"^llmgate_cache_coalesced_total (\d+)$", text, re.M).group(1))
    assert coalesced >= states.count("coalesced")


def test_waiters_go_upstream_when_the_leader_fails(gw, mock):
    m = msgs()
    n0 = upstream_count(mock)
    hdr = {"Authorization": f"Bearer {API_KEY}", "x-mock-latency-ms": "300", "x-mock-fault": "500"}
    with ThreadPoolExecutor(max_workers=6) as ex:
        rs = list(ex.map(lambda _: httpx.post(
            gw.url + "/v1/chat/completions", headers=hdr, timeout=30,
            json={"model": "mock-model", "messages": m, "temperature": 0}), range(6)))
    assert all(r.status_code == 502 for r in rs)
    assert upstream_count(mock) == n0 + 6  # nobody was handed the failure


# ------------------------------------------------------------------ faults

def test_corrupt_entry_is_a_miss_and_deleted(gw_redis_only, mock, redis_server):
    gw = gw_redis_only
    k = make_key(gw, "cache-corrupt")["key"]  # its own scope: the only entry there
    m = msgs()
    assert ask(gw, m, key=k).headers["x-llmgate-cache"] == "miss"
    keys = wait_until(lambda: redis_server.cmd("KEYS", "llmgate:rc:{cache-corrupt}:*"),
                      "the entry stored")
    assert len(keys) == 1
    key = keys[0]
    for garbage in (b"not an entry", b"LGRC\x01" + b"\x00" * 80, b"LGRC\x09" + b"\x00" * 80):
        redis_server.cmd("SET", key, garbage)
        r = ask(gw, m, key=k)
        assert r.status_code == 200 and r.headers["x-llmgate-cache"] == "miss"
        assert r.json()["choices"][0]["message"]["content"]
        # deleted, then stored again by the refreshing request (the second garbage
        # value has a valid entry's prefix itself: wait for a value that is not it)
        bad = garbage.decode(errors="replace")
        wait_until(lambda: (lambda v: v != bad and v.startswith("LGRC\x01\x00"))(
            redis_server.cmd("GET", key) or ""), "a valid entry again")
    # another type under the key (a GET there is a WRONGTYPE error): also a miss, deleted
    redis_server.cmd("DEL", key)
    redis_server.cmd("HSET", key, "f", "v")
    r = ask(gw, m, key=k)
    assert r.status_code == 200 and r.headers["x-llmgate-cache"] == "miss"
    wait_until(lambda: redis_server.cmd("TYPE", key) == "string", "a string entry again")
    assert ask(gw, m, key=k).headers["x-llmgate-cache"] == "hit"
    text = httpx.get(gw.url + "/metrics", timeout=5).text

    def metric(name):
        return int(re.search(r"^%s (\d+)$" % name, text, re.M).group(1))
    assert metric("llmgate_cache_corrupt_total") >= 4
    assert metric("llmgate_cache_hits_total") > 0 and metric("llmgate_cache_hit_bytes_total") > 0
    assert metric("llmgate_cache_stores_total") > 0


def test_redis_killed_mid_run_means_bypass(tmp_mod, mock):
    red = RedisServer(tmp_mod, "redis-cache-fault")
    g = Gateway(tmp_mod, mock.url, name="gwcf",
                extra_conf=cache_conf(red, tmp_mod, "gwcf", max_entry_bytes=2048, l1_bytes=0))
    try:
        m = msgs()
        assert ask(g, m).headers["x-llmgate-cache"] == "miss"
        assert ask(g, m).headers["x-llmgate-cache"] == "hit"
        # larger than cache.max_entry_bytes: never stored
        big = msgs()
        for _ in range(2):
            r = ask(g, big, headers={"x-mock-tokens": "1000"})
            assert r.headers["x-llmgate-cache"] == "miss"
        red.kill()
        for _ in range(20):
            r = ask(g, m)
            assert r.status_code == 200 and r.headers["x-llmgate-cache"] == "bypass"
            assert r.json()["choices"][0]["message"]["content"]
        log = g.proc.output()
        assert log.count("the response cache is bypassed") == 1, log[-3000:]
        red.start()
        wait_until(lambda: ask(g, m).headers["x-llmgate-cache"] in ("hit", "miss"),
                   "the cache back after Redis returned")
        wait_until(lambda: ask(g, m).headers["x-llmgate-cache"] == "hit", "hits again")
        # logged once every worker has seen Redis again (each serves some of these)
        wait_until(lambda: ask(g, m) and "the response cache is back" in g.proc.output(),
                   "the recovery logged")
        assert g.proc.output().count("the response cache is bypassed") == 1
    finally:
        assert g.proc.stop() == 0, g.proc.output()[-4000:]
        red.proc.stop()


# ------------------------------------------------------------------ the per-worker L1

def test_l1_refresh_replaces_the_answer_on_the_same_worker(gw1, mock):
    m = msgs()
    n0 = upstream_count(mock)
    a = ask(gw1, m)
    assert a.headers["x-llmgate-cache"] == "miss"
    before = metrics(gw1)
    b = ask(gw1, m)
    assert b.headers["x-llmgate-cache"] == "hit" and b.content == a.content
    after = metrics(gw1)
    assert after["llmgate_cache_l1_hits_total"] == before["llmgate_cache_l1_hits_total"] + 1
    # no-cache goes upstream for a new answer (another id) ...
    c = ask(gw1, m, headers={"Cache-Control": "no-cache"})
    assert c.headers["x-llmgate-cache"] == "miss"
    assert c.json()["id"] != a.json()["id"]
    # ... which replaces the one the L1 would otherwise serve for a minute
    d = ask(gw1, m)
    assert d.headers["x-llmgate-cache"] == "hit" and d.content == c.content
    assert upstream_count(mock) == n0 + 2
    # max-age older than the L1 entry: not served from the L1
    assert ask(gw1, m, headers={"Cache-Control": "max-age=3600"}).content == c.content


def test_l1_hits_are_metered_like_redis_hits(gw1, redis_server):
    k = make_key(gw1, "cache-l1-meter", limits={"rpm": 3, "tpm": 100000})
    m = msgs()
    assert ask(gw1, m, key=k["key"], max_tokens=5).headers["x-llmgate-cache"] == "miss"
    before = metrics(gw1)
    for _ in range(2):
        h = ask(gw1, m, key=k["key"], max_tokens=5)
        assert h.headers["x-llmgate-cache"] == "hit" and int(h.headers["age"]) >= 0
    after = metrics(gw1)
    assert after["llmgate_cache_l1_hits_total"] == before["llmgate_cache_l1_hits_total"] + 2
    assert after["llmgate_cache_hits_total"] == before["llmgate_cache_hits_total"] + 2
    assert after["llmgate_cache_hit_bytes_total"] > before["llmgate_cache_hit_bytes_total"]
    # the L1 hits counted as requests: the fourth one is over 3 per minute
    assert ask(gw1, m, key=k["key"], max_tokens=5).status_code == 429

    miss, *hits = wait_until(lambda: len(ok_records(redis_server, k["id"])) == 3 and
                             ok_records(redis_server, k["id"]), "three usage records")
    assert miss["cached_tokens"] == "0"
    for hit in hits:
        assert hit["completion_tokens"] == "5" and hit["cost_microusd"] == "0"
        assert int(hit["cached_tokens"]) == int(hit["prompt_tokens"]) + 5


def test_l1_tenants_stay_apart(gw1, mock):
    ka = make_key(gw1, "cache-l1-a")["key"]
    kb = make_key(gw1, "cache-l1-b")["key"]
    m = msgs()
    a = ask(gw1, m, key=ka)
    assert a.headers["x-llmgate-cache"] == "miss"
    assert ask(gw1, m, key=ka).headers["x-llmgate-cache"] == "hit"
    b = ask(gw1, m, key=kb)
    assert b.headers["x-llmgate-cache"] == "miss" and b.json()["id"] != a.json()["id"]
    assert ask(gw1, m, key=ka).content == a.content
    assert ask(gw1, m, key=kb).content == b.content


def test_l1_stream_replay_equals_the_redis_replay(gw1, gw_redis_only):
    m = msgs()
    assert ask(gw1, m, max_tokens=40).headers["x-llmgate-cache"] == "miss"
    for opts in ({}, {"stream_options": {"include_usage": True}}):
        from_l1 = [ask(gw1, m, max_tokens=40, stream=True, **opts) for _ in range(2)]
        from_redis = ask(gw_redis_only, m, max_tokens=40, stream=True, **opts)
        for r in from_l1 + [from_redis]:
            assert r.headers["x-llmgate-cache"] == "hit"
            assert r.headers["content-type"].startswith("text/event-stream")
        assert from_l1[0].content == from_l1[1].content == from_redis.content
        events = sse_events(from_l1[0].text)
        assert ("usage" in events[-1]) == bool(opts)


def test_client_gone_while_claiming_gives_the_lock_back(tmp_mod, mock):
    """A leader whose client leaves while its claim is on Redis gives the lock back when
    the claim's reply comes; it used to stay until it expired, with identical requests
    on every worker and replica waiting on it."""
    red = RedisServer(tmp_mod, "redis-claim")
    g = Gateway(tmp_mod, mock.url, workers=1, name="gwc-claim",
                extra_conf=cache_conf(red, tmp_mod, "gwc-claim", max_wait_ms=600000))
    try:
        payload = json.dumps({"model": "mock-model", "temperature": 0,
                              "messages": [{"role": "user", "content": f"claim {uuid.uuid4()}"}]})
        red.cmd("CLIENT", "PAUSE", "30000", "WRITE")  # the claim script waits; GET goes on
        try:
            s = raw_post(g.port, "/v1/chat/completions", payload,
                         {"Authorization": f"Bearer {API_KEY}", "x-request-id": "claim-1"})
            wait_until(lambda: script_waiting(red), "the claim waiting on Redis")
            s.close()
            wait_until(lambda: g.access_log.exists() and "claim-1" in g.access_log.read_text(),
                       "the request ended")
        finally:
            red.cmd("CLIENT", "UNPAUSE")
        wait_until(lambda: red.cmd("KEYS", "*:lock") == [], "the lock given back")
    finally:
        rc = g.proc.stop()
        red.proc.stop()
    assert rc == 0
