"""Tenant keys, quotas and usage metering against a real redis-server.

The OpenAI SDK sees AuthenticationError / PermissionDeniedError / RateLimitError
with OpenAI's headers; revocation reaches a second gateway by pub/sub; two
gateways on one Redis keep a tight token quota under 200+ concurrent requests
and meter exactly what the mock served; Redis killed and restarted mid-run
loses no usage record. Conditions are polled with deadlines, never slept on.
"""
import datetime
import hashlib
import json
import os
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from conftest import BUILDDIR, WAIT_S, Gateway, RedisServer, raw_post, script_waiting, wait_until

ADMIN = "admin-token-for-tests-0123456789"
os.environ["LLMGATE_ADMIN_TOKEN"] = ADMIN
MSGS = [{"role": "user", "content": "Say hello"}]


def quota_conf(redis, spool, **extra):
    conf = {"redis": {"port": redis.port, "command_timeout_ms": 500},
            "auth": {"redis_keys": True}, "usage": {"spool_path": str(spool)}}
    for k, v in extra.items():
        conf.setdefault(k, {}).update(v)
    return conf


def admin(gw, method, path, body=None, **params):
    r = httpx.request(method, gw.url + "/admin/v1/" + path, json=body, params=params,
                      headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
    return r


def make_key(gw, tenant, tenant_limits=None, **spec):
    r = admin(gw, "POST", "tenants", {"id": tenant, "limits": tenant_limits or {}})
    assert r.status_code == 201, r.text
    r = admin(gw, "POST", "keys", {"tenant": tenant, **spec})
    assert r.status_code == 201, r.text
    return r.json()


def records(redis):
    """Every usage record in the stream, as dicts."""
    out = []
    for _id, fields in redis.cmd("XRANGE", "llmgate:usage", "-", "+"):
        out.append(dict(zip(fields[::2], fields[1::2])))
    return out


def fire(jobs, concurrency):
    """Sends each (key, gateway, max_tokens) job as one chat completion, `concurrency`
    at a time; returns the HTTP statuses."""
    statuses = []
    lock = threading.Lock()
    with httpx.Client(limits=httpx.Limits(max_connections=128)) as http:
        def one(job):
            k, g, n = job
            r = http.post(g.url + "/v1/chat/completions", timeout=30,
                          headers={"Authorization": f"Bearer {k['key']}"},
                          json={"model": "mock-model", "messages": MSGS, "max_tokens": n})
            with lock:
                statuses.append(r.status_code)

        with ThreadPoolExecutor(max_workers=concurrency) as ex:
            list(ex.map(one, jobs))
    return statuses


@pytest.fixture(scope="module")
def gw(tmp_mod, mock, redis_server):
    g = Gateway(tmp_mod, mock.url, extra_conf=quota_conf(redis_server, tmp_mod / "spool-1"),
                name="gwq")
    yield g
    assert g.proc.stop() == 0, g.proc.output()[-4000:]


# ------------------------------------------------------------------ keys and auth

def test_tenant_key_works_with_openai_headers(gw, redis_server):
    k = make_key(gw, "acme", name="first", models=["mock-*"], limits={"rpm": 1000, "tpm": 100000})
    assert k["key"].startswith("sk-lg-") and len(k["key"]) >= 38  # >= 128 random bits
    # stored only as a SHA-256 digest
    digest = hashlib.sha256(k["key"].encode()).hexdigest()
    assert redis_server.cmd("GET", "llmgate:keyid:" + k["id"]) == digest
    assert k["key"] not in json.dumps(redis_server.cmd("HGETALL", "llmgate:key:" + digest))
    raw = gw.client(key=k["key"]).chat.completions.with_raw_response.create(
        model="mock-model", messages=MSGS, max_tokens=5)
    assert raw.parse().usage.completion_tokens == 5
    h = raw.headers
    assert h["x-ratelimit-limit-requests"] == "1000"
    assert int(h["x-ratelimit-remaining-requests"]) == 999
    assert h["x-ratelimit-limit-tokens"] == "100000"
    assert 0 < int(h["x-ratelimit-remaining-tokens"]) < 100000
    assert h["x-ratelimit-reset-requests"].endswith("s") and h["x-ratelimit-reset-tokens"].endswith("s")
    # Azure- and Anthropic-style headers are accepted too
    for hdr in ("api-key", "x-api-key"):
        r = httpx.post(gw.url + "/v1/chat/completions", headers={hdr: k["key"]},
                       json={"model": "mock-model", "messages": MSGS, "max_tokens": 2})
        assert r.status_code == 200, r.text
    # the static bootstrap key of the core tests keeps working (unmetered)
    assert gw.client().chat.completions.create(model="mock-model", messages=MSGS, max_tokens=1)


def test_limits_past_32_bits(gw):
    """A monthly or daily token limit beyond 4e9 is stored and enforced whole (it used to
    read back as "no limit"); a limit past its maximum is a 400, not a silent cap."""
    k = make_key(gw, "bigmonth", tenant_limits={"tpmo": 5_000_000_000},
                 limits={"tpd": 1_000_000_000_000})
    r = httpx.post(gw.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {k['key']}"},
                   json={"model": "mock-model", "messages": MSGS, "max_tokens": 3}, timeout=10)
    assert r.status_code == 200, r.text
    # the tightest window is the tenant's month: its whole limit, less this reservation
    assert r.headers["x-ratelimit-limit-tokens"] == "5000000000"
    assert 4_999_999_000 < int(r.headers["x-ratelimit-remaining-tokens"]) < 5_000_000_000
    for field, value in (("tpmo", 1_000_000_000_001), ("tpd", 10**13), ("rpm", 4_000_000_001),
                         ("tpm", 5_000_000_000)):
        r = admin(gw, "POST", "tenants", {"id": f"toobig-{field}", "limits": {field: value}})
        assert r.status_code == 400, r.text
        assert f"limit {field} must be at most" in r.json()["error"]["message"]


def test_unknown_revoked_expired_keys_are_401(gw):
    with pytest.raises(openai.AuthenticationError) as ei:
        gw.client(key="sk-lg-" + "0" * 48).chat.completions.create(model="mock-model", messages=MSGS)
    assert ei.value.code == "invalid_api_key"
    k = make_key(gw, "acme", name="to-revoke")
    c = gw.client(key=k["key"])
    c.chat.completions.create(model="mock-model", messages=MSGS, max_tokens=1)
    assert admin(gw, "DELETE", "keys/" + k["id"]).json()["status"] == "revoked"
    with pytest.raises(openai.AuthenticationError):
        wait_until(lambda: c.chat.completions.create(model="mock-model", messages=MSGS) and False,
                   "revocation", timeout=WAIT_S)
    e = make_key(gw, "acme", name="expired", expires=1)
    with pytest.raises(openai.AuthenticationError) as ei:
        gw.client(key=e["key"]).chat.completions.create(model="mock-model", messages=MSGS)
    assert "expired" in ei.value.message


def test_model_outside_globs_is_403(gw):
    k = make_key(gw, "acme", name="narrow", models=["gpt-4o*", "other-?"])
    with pytest.raises(openai.PermissionDeniedError) as ei:
        gw.client(key=k["key"]).chat.completions.create(model="mock-model", messages=MSGS)
    assert ei.value.status_code == 403 and ei.value.code == "model_not_allowed"


def test_admin_api_needs_the_token(gw):
    r = httpx.get(gw.url + "/admin/v1/keys", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    assert httpx.get(gw.url + "/admin/v1/keys").status_code == 401
    assert admin(gw, "GET", "keys/key_doesnotexist").status_code == 404
    assert admin(gw, "POST", "keys", {"tenant": "no-such-tenant"}).status_code == 404
    assert admin(gw, "GET", "tenants/acme").json()["keys"] >= 1


# ------------------------------------------------------------------ quotas

def test_requests_per_minute_429(gw):
    k = make_key(gw, "rl-req", limits={"rpm": 2})
    c = gw.client(key=k["key"])
    for _ in range(2):
        c.chat.completions.create(model="mock-model", messages=MSGS, max_tokens=1)
    with pytest.raises(openai.RateLimitError) as ei:
        c.chat.completions.create(model="mock-model", messages=MSGS, max_tokens=1)
    h = ei.value.response.headers
    body = ei.value.response.json()["error"]
    assert body["type"] == "requests" and body["code"] == "rate_limit_exceeded"
    # one request refills in 30 s at 2/min: Retry-After comes from the bucket, not a constant
    assert 25 <= int(h["retry-after"]) <= 30
    assert h["x-ratelimit-limit-requests"] == "2" and h["x-ratelimit-remaining-requests"] == "0"


def test_tokens_per_minute_429(gw):
    k = make_key(gw, "rl-tok", limits={"tpm": 100})
    c = gw.client(key=k["key"])
    with pytest.raises(openai.RateLimitError) as ei:  # larger than the bucket: never fits
        c.chat.completions.create(model="mock-model", messages=MSGS, max_tokens=200)
    assert ei.value.response.json()["error"]["type"] == "tokens"
    assert "too large" in ei.value.message
    # each reserves 3 + 8 + 60 = 71 of 100; settle refunds the 44 the mock did not
    # generate (it answers 16 tokens), so the second fits, the third does not
    c.chat.completions.create(model="mock-model", messages=MSGS, max_tokens=60)
    c.chat.completions.create(model="mock-model", messages=MSGS, max_tokens=60)
    with pytest.raises(openai.RateLimitError) as ei:
        c.chat.completions.create(model="mock-model", messages=MSGS, max_tokens=60)
    h = ei.value.response.headers
    assert ei.value.response.json()["error"]["type"] == "tokens"
    assert 1 <= int(h["retry-after"]) <= 6 and h["x-ratelimit-limit-tokens"] == "100"
    assert int(h["retry-after-ms"]) > 3000  # (71 - ~64 left) tokens at 100/min


def test_tenant_limit_spans_keys(gw):
    a = make_key(gw, "rl-tenant", tenant_limits={"rpm": 3})
    b = make_key(gw, "rl-tenant")
    ok = 0
    for k in (a, b, a, b):
        try:
            gw.client(key=k["key"]).chat.completions.create(model="mock-model", messages=MSGS,
                                                             max_tokens=1)
            ok += 1
        except openai.RateLimitError:
            pass
    assert ok == 3


def quota_metrics(gw):
    out = {}
    for line in httpx.get(gw.url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(("llmgate_quota_", "llmgate_usage_")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_quota_metrics(gw):
    """/metrics counts reserves (a histogram of their round trip), refusals and records."""
    before = quota_metrics(gw)
    k = make_key(gw, "metrics-t", limits={"rpm": 2})
    c = gw.client(key=k["key"])
    for _ in range(2):
        c.chat.completions.create(model="mock-model", messages=MSGS, max_tokens=1)
    with pytest.raises(openai.RateLimitError):
        c.chat.completions.create(model="mock-model", messages=MSGS, max_tokens=1)
    wait_until(lambda: quota_metrics(gw)["llmgate_usage_records_total"]
               >= before["llmgate_usage_records_total"] + 3, "usage records counted")
    after = quota_metrics(gw)
    n = 'llmgate_quota_reserve_seconds_count'
    assert after[n] - before[n] >= 3
    inf = 'llmgate_quota_reserve_seconds_bucket{le="+Inf"}'
    assert after[inf] == after[n]  # cumulative buckets end at the count
    assert after['llmgate_quota_reserve_seconds_bucket{le="5e-05"}'] <= after[inf]
    assert after["llmgate_quota_reserve_seconds_sum"] > before["llmgate_quota_reserve_seconds_sum"]
    assert after["llmgate_quota_denied_total"] - before["llmgate_quota_denied_total"] == 1
    assert after["llmgate_usage_settle_calls_total"] > before["llmgate_usage_settle_calls_total"]


def test_abandoned_request_is_metered(gw, mock, redis_server, tmp_mod):
    """A buffered request whose client leaves is charged what the upstream generated:
    the upstream answers for nobody (quota.abandoned = finish, the default), or, with
    `cancel`, is stopped and only the prompt is charged."""
    k = make_key(gw, "abandon", limits={"tpm": 100000})
    cancelled = mock.stats()["cancelled"]
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gw.url + "/v1/chat/completions", timeout=0.3, headers={
            "Authorization": f"Bearer {k['key']}", "x-mock-latency-ms": "800",
            "x-mock-tokens": "7"}, json={"model": "mock-model", "messages": MSGS, "max_tokens": 50})

    def mine():
        return [x for x in records(redis_server) if x["key_id"] == k["id"]]
    wait_until(lambda: len(mine()) == 1, "the abandoned request's usage record")
    rec = mine()[0]
    assert rec["status"] == "499" and rec["error"] == "client_closed"
    assert rec["completion_tokens"] == "7" and rec["estimated"] == "0"
    assert mock.stats()["cancelled"] == cancelled  # the upstream was let finish

    g = Gateway(tmp_mod, mock.url, name="gwq-cancel", extra_conf=quota_conf(
        redis_server, tmp_mod / "spool-cancel", quota={"abandoned": "cancel"}))
    try:
        k2 = make_key(g, "abandon-cancel", limits={"tpm": 100000})
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(g.url + "/v1/chat/completions", timeout=0.3, headers={
                "Authorization": f"Bearer {k2['key']}", "x-mock-latency-ms": "800",
                "x-mock-tokens": "7"}, json={"model": "mock-model", "messages": MSGS,
                                             "max_tokens": 50})
        wait_until(lambda: mock.stats()["cancelled"] > cancelled, "the upstream cancelled")
        wait_until(lambda: any(x["key_id"] == k2["id"] for x in records(redis_server)),
                   "the cancelled request's usage record")
        rec = next(x for x in records(redis_server) if x["key_id"] == k2["id"])
        assert rec["status"] == "499" and rec["completion_tokens"] == "0"
    finally:
        g.proc.stop()


def tcp_send_queue(port):
    """The largest send queue of the established loopback TCP sockets bound to port."""
    most = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[3] == "01" and int(fields[1].split(":")[1], 16) == port:
                most = max(most, int(fields[4].split(":")[0], 16))
    return most


def stream_and_leave(gw, key, headers, chunks=1, stall_port=None):
    """Opens a chat stream, reads `chunks` content chunks and hangs up; with
    stall_port, first stops reading until that port's sender is stuck (nobody
    reads what it sends: the gateway paused the upstream for this slow client)."""
    with httpx.stream("POST", gw.url + "/v1/chat/completions", timeout=10, headers={
            "Authorization": f"Bearer {key}", **headers},
            json={"model": "mock-model", "messages": MSGS, "stream": True,
                  "max_tokens": 500000}) as r:
        assert r.status_code == 200
        seen, lines = 0, r.iter_lines()  # held: dropping it mid-body closes the connection
        for line in lines:
            seen += line.startswith("data: {") and '"content":"tok' in line
            if seen == chunks:
                break
        assert seen == chunks
        if stall_port:
            last = [-1]

            def stuck():
                prev, last[0] = last[0], tcp_send_queue(stall_port)
                return last[0] > 0 and last[0] == prev
            wait_until(stuck, "the upstream paused for a client that stopped reading",
                       interval=0.05)


def test_abandoned_stream_is_metered(gw, mock, redis_server, tmp_mod):
    """A stream whose client leaves is charged what the upstream generated, as a
    buffered request is: its events are read (usage included) and sent nowhere,
    whether the client left after the first chunks, before any byte, or while the
    upstream was paused for it. With `cancel` the stream is stopped and charged
    prompt + one token per relayed chunk, an estimate."""
    cancelled = mock.stats()["cancelled"]

    def record_of(k):
        return wait_until(lambda: next((x for x in records(redis_server)
                                        if x["key_id"] == k["id"]), None),
                          f"the usage record of {k['id']}")

    def assert_exact(rec, tokens):
        assert rec["status"] == "499" and rec["error"] == "client_closed", rec
        assert rec["completion_tokens"] == str(tokens) and rec["estimated"] == "0", rec

    # after the first relayed chunks
    k = make_key(gw, "abandon-stream", limits={"tpm": 1000000})
    stream_and_leave(gw, k["key"], {"x-mock-tokens": "20", "x-mock-interval-ms": "50"}, chunks=2)
    assert_exact(record_of(k), 20)
    # before any byte
    k = make_key(gw, "abandon-stream-early", limits={"tpm": 1000000})
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gw.url + "/v1/chat/completions", timeout=0.3, headers={
            "Authorization": f"Bearer {k['key']}", "x-mock-latency-ms": "800",
            "x-mock-tokens": "7"}, json={"model": "mock-model", "messages": MSGS,
                                         "stream": True, "max_tokens": 50})
    assert_exact(record_of(k), 7)
    # while the upstream is paused for the slow client: it must be resumed
    k = make_key(gw, "abandon-stream-paused", limits={"tpm": 1000000})
    stream_and_leave(gw, k["key"], {"x-mock-tokens": "400000"}, stall_port=mock.port)
    assert_exact(record_of(k), 400000)
    assert mock.stats()["cancelled"] == cancelled  # every upstream was let finish

    g = Gateway(tmp_mod, mock.url, name="gwq-cancel-stream", extra_conf=quota_conf(
        redis_server, tmp_mod / "spool-cancel-stream", quota={"abandoned": "cancel"}))
    try:
        k = make_key(g, "abandon-stream-cancel", limits={"tpm": 1000000})
        stream_and_leave(g, k["key"], {"x-mock-tokens": "20", "x-mock-interval-ms": "50"})
        wait_until(lambda: mock.stats()["cancelled"] > cancelled, "the upstream cancelled")
        rec = record_of(k)
        assert rec["status"] == "499" and rec["estimated"] == "1", rec
        assert 1 <= int(rec["completion_tokens"]) < 20, rec
    finally:
        g.proc.stop()


def test_abandoned_stream_stores_nothing_and_frees_its_waiters(gw, mock, redis_server):
    """A cacheable stream whose client leaves is metered but never cached, and the
    identical requests waiting for its answer (single flight on its worker, the
    Redis lock on the others) go upstream at once instead of waiting for it."""
    k = make_key(gw, "abandon-cacheable", limits={"tpm": 1000000})
    auth = {"Authorization": f"Bearer {k['key']}"}

    def body(prompt):
        return {"model": "mock-model", "messages": [{"role": "user", "content": prompt}],
                "temperature": 0, "stream": True, "max_tokens": 50}

    def ask(prompt, hdr):
        r = httpx.post(gw.url + "/v1/chat/completions", timeout=30, headers={**auth, **hdr},
                       json=body(prompt))
        assert r.status_code == 200 and "data: [DONE]" in r.text, r.text
        return r

    def mine():
        return [x for x in records(redis_server) if x["key_id"] == k["id"]]

    def leave_after_first_token(prompt, hdr):
        with httpx.stream("POST", gw.url + "/v1/chat/completions", timeout=10,
                          headers={**auth, **hdr}, json=body(prompt)) as r:
            assert r.headers["x-llmgate-cache"] == "miss"
            lines = r.iter_lines()  # held until the with ends, which hangs up
            next(line for line in lines if '"content":"tok' in line)

    # a lone orphan: its answer, complete upstream, is not stored
    prompt = "orphan " + os.urandom(8).hex()
    hdr = {"x-mock-tokens": "5", "x-mock-interval-ms": "50"}
    leave_after_first_token(prompt, hdr)
    wait_until(lambda: len(mine()) == 1, "the orphan's usage record")
    assert mine()[0]["status"] == "499" and mine()[0]["completion_tokens"] == "5"
    assert ask(prompt, hdr).headers["x-llmgate-cache"] == "miss"

    # a leader that becomes an orphan while an identical request waits on it
    prompt = "leader " + os.urandom(8).hex()
    hdr = {"x-mock-latency-ms": "1000", "x-mock-tokens": "20", "x-mock-interval-ms": "100"}
    base = mock.stats()["in_flight"]
    with ThreadPoolExecutor(max_workers=2) as ex:
        leader = ex.submit(leave_after_first_token, prompt, hdr)
        wait_until(lambda: mock.stats()["in_flight"] == base + 1, "the leader upstream")
        waiter = ex.submit(ask, prompt, hdr)  # parks: the leader's first token is 1 s away
        leader.result()
        # the leader's upstream runs on for ~2 s: the waiter must not wait for it
        wait_until(lambda: mock.stats()["in_flight"] == base + 2,
                   "the waiter upstream beside the orphan")
        b = waiter.result()
    assert b.headers["x-llmgate-cache"] == "miss"
    wait_until(lambda: len(mine()) == 4, "the leader's and the waiter's usage records")
    recs = sorted(mine()[2:], key=lambda x: x["status"])
    assert [x["status"] for x in recs] == ["200", "499"], recs
    assert all(x["completion_tokens"] == "20" and x["estimated"] == "0" for x in recs), recs


def test_stream_usage_metered_and_stripped(gw, mock, redis_server):
    k = make_key(gw, "streams", limits={"tpm": 100000})
    with httpx.stream("POST", gw.url + "/v1/chat/completions",
                      headers={"Authorization": f"Bearer {k['key']}"},
                      json={"model": "mock-model", "messages": MSGS, "stream": True,
                            "max_tokens": 4}) as r:
        assert r.status_code == 200
        assert r.headers["x-ratelimit-limit-tokens"] == "100000"
        body = r.read().decode()
    assert mock.stats()["last"]["stream_options"] == {"include_usage": True}
    assert '"usage":{' not in body  # the client did not ask for it
    chunks = [json.loads(e[6:]) for e in body.split("\n\n") if e.startswith("data: {")]
    assert all(c["choices"] for c in chunks)
    # asked for: passed through
    stream = gw.client(key=k["key"]).chat.completions.create(
        model="mock-model", messages=MSGS, stream=True, max_tokens=3,
        stream_options={"include_usage": True})
    usage = [c.usage for c in stream if c.usage]
    assert usage and usage[0].completion_tokens == 3
    recs = wait_until(lambda: len([x for x in records(redis_server) if x["key_id"] == k["id"]]) == 2
                      and [x for x in records(redis_server) if x["key_id"] == k["id"]],
                      "two usage records")
    assert sorted(int(x["completion_tokens"]) for x in recs) == [3, 4]
    assert all(x["estimated"] == "0" and x["status"] == "200" for x in recs)


def test_usage_report_json_and_csv(gw, redis_server):
    k = make_key(gw, "reports", limits={"tpm": 100000})
    c = gw.client(key=k["key"])
    for n in (2, 3):
        c.chat.completions.create(model="mock-model", messages=MSGS, max_tokens=n)
    rep = wait_until(lambda: (r := admin(gw, "GET", "usage", tenant="reports", group_by="key").json())
                     ["total"]["requests"] == 2 and r, "report")
    assert rep["rows"][0]["group"] == k["id"]
    assert rep["rows"][0]["completion_tokens"] == 5
    r = admin(gw, "GET", "usage", tenant="reports", group_by="model", format="csv")
    assert r.headers["content-type"].startswith("text/csv")
    lines = r.text.strip().split("\n")
    assert lines[0].startswith("model,requests,prompt_tokens,completion_tokens")
    assert lines[1].startswith("mock-model,2,")
    assert admin(gw, "GET", "usage", tenant="reports", group_by="nope").status_code == 400


def test_cli_keys_and_usage(gw):
    def cli(*args):
        p = subprocess.run([str(BUILDDIR / "llmgate"), *args, "-c", str(gw.conf_path)],
                           capture_output=True, text=True, timeout=30)
        return p

    p = cli("tenants", "create", "cli-t", "--rpm", "100")
    assert p.returncode == 0, p.stderr
    p = cli("keys", "create", "--tenant", "cli-t", "--name", "from-cli", "--tpm", "5000",
            "--models", "mock-*")
    assert p.returncode == 0, p.stderr
    k = json.loads(p.stdout)
    assert k["limits"]["tpm"] == 5000 and k["models"] == ["mock-*"]
    gw.client(key=k["key"]).chat.completions.create(model="mock-model", messages=MSGS, max_tokens=1)
    listed = json.loads(cli("keys", "list", "--tenant", "cli-t").stdout)["data"]
    assert [x["id"] for x in listed] == [k["id"]] and "key" not in listed[0]
    assert json.loads(cli("keys", "show", k["id"]).stdout)["status"] == "active"
    p = cli("keys", "rotate", k["id"])
    assert p.returncode == 0, p.stderr
    k2 = json.loads(p.stdout)
    assert k2["key"] != k["key"] and k2["limits"]["tpm"] == 5000
    gw.client(key=k2["key"]).chat.completions.create(model="mock-model", messages=MSGS, max_tokens=1)
    with pytest.raises(openai.AuthenticationError):
        wait_until(lambda: gw.client(key=k["key"]).chat.completions.create(
            model="mock-model", messages=MSGS) and False, "rotation revoked the old key")
    assert cli("keys", "revoke", k2["id"]).returncode == 0
    p = cli("usage", "--tenant", "cli-t", "--group-by", "key", "--format", "csv")
    assert p.returncode == 0 and p.stdout.startswith("key,requests,")
    assert cli("keys", "show", "key_nope").returncode == 1


def test_revocation_reaches_a_second_gateway(tmp_mod, mock, gw, redis_server):
    # gw2 trusts its cache for a minute: only the pub/sub invalidation can make it
    # refuse the key within the deadline below.
    gw2 = Gateway(tmp_mod, mock.url, name="gwq2",
                  extra_conf=quota_conf(redis_server, tmp_mod / "spool-2",
                                        auth={"key_cache_ttl_ms": 60000}))
    try:
        k = make_key(gw, "revoke2")
        c2 = gw2.client(key=k["key"])
        for _ in range(4):  # warm the cache of both workers
            c2.chat.completions.create(model="mock-model", messages=MSGS, max_tokens=1)
        assert admin(gw, "POST", f"keys/{k['id']}/revoke").status_code == 200

        def refused():
            try:
                c2.chat.completions.create(model="mock-model", messages=MSGS, max_tokens=1)
                return False
            except openai.AuthenticationError:
                return True
        wait_until(refused, "revocation on the second gateway")
        for _ in range(4):  # every worker
            assert refused()
    finally:
        assert gw2.proc.stop() == 0


def _redis_sockets(pid, redis_port):
    """The timer_active field of each of pid's TCP connections to redis_port, from
    /proc/net/tcp (2: the keepalive timer is armed)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    timers = []
    with open(f"/proc/{pid}/net/tcp") as f:
        for line in list(f)[1:]:
            cols = line.split()
            rem_port = int(cols[2].split(":")[1], 16)
            if cols[3] == "01" and rem_port == redis_port and cols[9] in inodes:
                timers.append(int(cols[5].split(":")[0], 16))
    return timers


def test_subscriptions_use_tcp_keepalive(gw, redis_server):
    """A subscribed connection only reads: without keepalive a vanished Redis host
    would leave it waiting for good, missing every revocation. Each worker's
    subscription has its keepalive timer armed."""
    k = make_key(gw, "keepalive")
    gw.client(key=k["key"]).chat.completions.create(model="mock-model", messages=MSGS, max_tokens=1)
    subs = wait_until(lambda: len([c for c in redis_server.cmd("CLIENT", "LIST").splitlines()
                                   if "cmd=subscribe" in c]) or None, "the subscriptions")
    timers = wait_until(lambda: _redis_sockets(gw.proc.p.pid, redis_server.port) or None,
                        "the gateway's Redis connections")
    assert timers.count(2) >= subs, timers


# ------------------------------------------------------------------ two gateways, tight quotas

def test_two_gateways_hold_a_tight_token_quota(tmp_mod, mock, gw, redis_server):
    gw2 = Gateway(tmp_mod, mock.url, name="gwq3",
                  extra_conf=quota_conf(redis_server, tmp_mod / "spool-3"))
    try:
        tpd, tenant_tpd = 400, 2500
        keys = [make_key(gw, "tight", tenant_limits={"tpd": tenant_tpd}, limits={"tpd": tpd})
                for _ in range(8)]
        before = len(records(redis_server))
        mock.reset()
        jobs = [(keys[i % len(keys)], (gw, gw2)[i % 2], 5 + i % 16) for i in range(240)]
        statuses = fire(jobs, 64)
        assert set(statuses) <= {200, 429} and statuses.count(429) > 0
        recs = wait_until(lambda: len(records(redis_server)) - before == len(jobs) and
                          records(redis_server)[before:], "a usage record per request")
        # reservation of one request: ceil(chars/4) + 8 + max_tokens
        largest = (len("Say hello") + 3) // 4 + 8 + 20
        ids = {k["id"] for k in keys}
        ok = [x for x in recs if x["key_id"] in ids and x["status"] == "200"]
        for k in keys:
            used = sum(int(x["prompt_tokens"]) + int(x["completion_tokens"])
                       for x in ok if x["key_id"] == k["id"])
            assert used <= tpd + largest, (k["id"], used)
        total = sum(int(x["prompt_tokens"]) + int(x["completion_tokens"]) for x in ok)
        assert total <= tenant_tpd + largest
        s = mock.stats()["usage"]
        assert sum(int(x["prompt_tokens"]) for x in recs) == s["prompt_tokens"]
        assert sum(int(x["completion_tokens"]) for x in recs) == s["completion_tokens"]
        paths = mock.stats()["paths"]  # (health probes hit /v1/models meanwhile)
        assert len(ok) == next(v for p, v in paths.items() if "chat" in p)
    finally:
        assert gw2.proc.stop() == 0


# ------------------------------------------------------------------ Redis killed mid-run

def test_redis_killed_and_restarted_mid_run(tmp_mod, mock):
    red = RedisServer(tmp_mod, "redis-fault")
    spool = tmp_mod / "spool-fault"
    g = Gateway(tmp_mod, mock.url, name="gwfault",
                extra_conf=quota_conf(red, spool, quota={"on_redis_error": "fail_open"}))
    try:
        k = make_key(g, "faulty", limits={"tpm": 10000000})
        c = g.client(key=k["key"], timeout=30)
        for _ in range(8):  # every worker knows the key before Redis goes away
            c.chat.completions.create(model="mock-model", messages=MSGS, max_tokens=1)
        mock.reset()
        base = len(records(red))
        done, statuses, lock = [0], [], threading.Lock()

        http = httpx.Client(limits=httpx.Limits(max_connections=64))

        def one(i):
            r = http.post(g.url + "/v1/chat/completions", timeout=30,
                           headers={"Authorization": f"Bearer {k['key']}"},
                           json={"model": "mock-model", "messages": MSGS, "max_tokens": 1 + i % 7,
                                 "stream": i % 3 == 0})
            with lock:
                statuses.append(r.status_code)
                done[0] += 1

        with ThreadPoolExecutor(max_workers=16) as ex:
            futs = [ex.submit(one, i) for i in range(300)]
            wait_until(lambda: done[0] >= 60, "load before the kill")
            red.kill()
            wait_until(lambda: done[0] >= 160, "load while Redis is down")
            red.start()
            for f in futs:
                f.result()  # none hangs: each has a 30 s client timeout
        assert g.proc.alive()
        # a worker that never saw the key cannot check it while Redis is down: 503
        assert set(statuses) <= {200, 503}, sorted(set(statuses))
        assert statuses.count(200) >= 250
        served = mock.stats()

        def size(p):  # the gateway removes a replayed spool file at any moment
            try:
                return p.stat().st_size
            except FileNotFoundError:
                return 0

        def replayed():
            left = [p for p in tmp_mod.iterdir() if p.name.startswith("spool-fault") and
                    size(p) > 0 and not p.name.endswith(".rejected")]
            if left:
                return False
            recs = records(red)[base:]
            return len(recs) == statuses.count(200) and recs
        recs = wait_until(replayed, "the spool replayed into Redis")
        assert "spooled usage record(s)" in g.proc.output()  # the outage went through the spool
        assert sum(int(x["prompt_tokens"]) for x in recs) == served["usage"]["prompt_tokens"]
        assert sum(int(x["completion_tokens"]) for x in recs) == served["usage"]["completion_tokens"]
    finally:
        rc = g.proc.stop()
        red.proc.stop()
    assert rc == 0


def test_fail_open_admits_a_request_larger_than_a_worker_share(tmp_mod, mock):
    """While Redis is down each worker enforces its share of tpm. A request larger than
    that share but within the key's tpm waits for a full bucket and is admitted (it used
    to be refused for ever, with a Retry-After of seconds); one larger than the whole
    tpm is "too large", as on Redis."""
    red = RedisServer(tmp_mod, "redis-share")
    g = Gateway(tmp_mod, mock.url, workers=2, name="gw-share",
                extra_conf=quota_conf(red, tmp_mod / "spool-share",
                                      quota={"on_redis_error": "fail_open"}))
    try:
        k = make_key(g, "shares", limits={"tpm": 4000})
        hdr = {"Authorization": f"Bearer {k['key']}"}

        def ask(max_tokens):  # a new connection each time: either worker may take it
            return httpx.post(g.url + "/v1/chat/completions", headers=hdr, timeout=30,
                              json={"model": "mock-model", "messages": MSGS,
                                    "max_tokens": max_tokens})

        # both workers learn the key (a worker that never saw it answers 503 without Redis)
        for _ in range(24):
            assert ask(1).status_code == 200
        red.kill()
        # 2,500 tokens and the prompt: more than a worker's 2,000, within the key's 4,000
        r = ask(2500)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 16  # the mock's answer
        r = ask(5000)
        assert r.status_code == 429, r.text
        assert r.json()["error"]["message"].startswith("Request too large")
    finally:
        rc = g.proc.stop()
        red.proc.stop()
    assert rc == 0


def test_spool_replay_gets_past_a_torn_line(tmp_mod, mock):
    """A spool whose only line is torn (a crash mid-write) is dropped with a warning and
    replay goes on: the next outage's records still reach Redis (a lone torn line used to
    stall the replay for good)."""
    red = RedisServer(tmp_mod, "redis-torn")
    spool = tmp_mod / "spool-torn"
    spool.write_text('{"k":["llmgate:q:{torn}:k:\n')
    g = Gateway(tmp_mod, mock.url, workers=1, name="gw-torn",
                extra_conf=quota_conf(red, spool, quota={"on_redis_error": "fail_open"}))
    try:
        k = make_key(g, "torn", limits={"tpm": 100000})
        hdr = {"Authorization": f"Bearer {k['key']}"}
        body = {"model": "mock-model", "messages": MSGS, "max_tokens": 2}
        assert httpx.post(g.url + "/v1/chat/completions", headers=hdr, json=body).status_code == 200
        wait_until(lambda: "malformed spool line" in g.proc.output(), "the torn line skipped")
        red.kill()
        r = httpx.post(g.url + "/v1/chat/completions", headers=hdr, json=body, timeout=30)
        assert r.status_code == 200, r.text
        rid = r.headers["x-request-id"]
        red.start()
        wait_until(lambda: any(x["request_id"] == rid for x in records(red)),
                   "the outage's usage record replayed")
    finally:
        rc = g.proc.stop()
        red.proc.stop()
    assert rc == 0


def test_client_gone_before_its_reserve_reply_is_settled(tmp_mod, mock):
    """A client that leaves while its reserve is still on Redis: the reservation is
    settled when the reply comes (its slot freed, its tokens back in the day window, a
    usage record written). It used to stay charged, and the slot held for the lease."""
    red = RedisServer(tmp_mod, "redis-gone")
    g = Gateway(tmp_mod, mock.url, workers=1, name="gw-gone",
                extra_conf=quota_conf(red, tmp_mod / "spool-gone"))
    try:
        k = make_key(g, "gone", limits={"concurrency": 1, "tpd": 100000})
        hdr = {"Authorization": f"Bearer {k['key']}"}
        body = {"model": "mock-model", "messages": MSGS, "max_tokens": 2}
        assert httpx.post(g.url + "/v1/chat/completions", headers=hdr, json=body).status_code == 200
        wait_until(lambda: len(records(red)) == 1, "the first usage record")
        scope = f"llmgate:q:{{gone}}:k:{k['id']}"
        day_before = int(red.cmd("HGET", scope, "d"))

        red.cmd("CLIENT", "PAUSE", "30000", "WRITE")  # scripts wait; reads go on
        try:
            s = raw_post(g.port, "/v1/chat/completions", json.dumps({**body, "max_tokens": 1000}),
                         {"Authorization": f"Bearer {k['key']}", "x-request-id": "gone-1"})
            wait_until(lambda: script_waiting(red), "the reserve waiting on Redis")
            s.close()
            wait_until(lambda: g.access_log.exists() and "gone-1" in g.access_log.read_text(),
                       "the request ended")
        finally:
            red.cmd("CLIENT", "UNPAUSE")
        recs = wait_until(lambda: [x for x in records(red) if x["request_id"] == "gone-1"],
                          "the abandoned request's usage record")
        assert recs[0]["status"] == "499" and recs[0]["prompt_tokens"] == "0"
        assert red.cmd("ZCARD", scope + ":c") == 0
        assert int(red.cmd("HGET", scope, "d")) == day_before
        # the slot is free: the next request is served, not refused for concurrency
        r = httpx.post(g.url + "/v1/chat/completions", headers=hdr, json=body, timeout=30)
        assert r.status_code == 200, r.text
    finally:
        rc = g.proc.stop()
        red.proc.stop()
    assert rc == 0


# ------------------------------------------------------------------ fail_open keeps calendar windows

def window_left_s(window):
    """Seconds from now to the end of the current UTC day or month."""
    now = datetime.datetime.now(datetime.timezone.utc)
    if window == "tpd":
        end = (now + datetime.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    else:
        y, m = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
        end = datetime.datetime(y, m, 1, tzinfo=datetime.timezone.utc)
    return (end - now).total_seconds()


@pytest.mark.parametrize("window", ["tpd", "tpmo"])
def test_fail_open_keeps_day_and_month_limits(tmp_mod, mock, window):
    """While Redis is down, the local limiter starts from the day (month) usage Redis
    last reported, stops admitting at the limit with a 429 that says when the window
    ends, and what it admitted is charged exactly once Redis is back."""
    if window_left_s(window) < 120:
        pytest.skip("too close to the window's end for a stable test")
    limit = 600
    red = RedisServer(tmp_mod, f"redis-{window}")
    spool = tmp_mod / f"spool-{window}"
    g = Gateway(tmp_mod, mock.url, workers=1, name=f"gw-{window}",
                extra_conf=quota_conf(red, spool, quota={"on_redis_error": "fail_open"}))
    http = httpx.Client(timeout=30)
    try:
        k = make_key(g, f"cal-{window}", limits={window: limit})

        def ask():
            return http.post(g.url + "/v1/chat/completions",
                             headers={"Authorization": f"Bearer {k['key']}"},
                             json={"model": "mock-model", "messages": MSGS, "max_tokens": 10})

        # Redis up: one request's reservation shows in the window's remaining tokens
        r = ask()
        assert r.status_code == 200, r.text
        need = limit - int(r.headers["x-ratelimit-remaining-tokens"])
        assert 10 < need < 100
        for _ in range(4):
            assert ask().status_code == 200
        recs = wait_until(lambda: len(records(red)) == 5 and records(red), "five usage records")
        used = sum(int(x["prompt_tokens"]) + int(x["completion_tokens"]) for x in recs)

        mock.reset()
        red.kill()
        statuses, denied = [], None
        for _ in range(limit // 10):  # far more than the window can take
            r = ask()
            statuses.append(r.status_code)
            if r.status_code != 200:
                denied = r
                break
        assert denied is not None, f"{len(statuses)} requests admitted past a {window} of {limit}"
        assert denied.status_code == 429, denied.text
        err = denied.json()["error"]
        assert err["type"] == "tokens" and err["code"] == "rate_limit_exceeded"
        assert f"({window})" in err["message"]
        assert abs(int(denied.headers["retry-after"]) - window_left_s(window)) < 10
        usage = mock.stats()["usage"]
        assert usage["completion_tokens"] == 10 * statuses.count(200)  # each admitted one served
        served = usage["prompt_tokens"] + usage["completion_tokens"]
        # the limit held, and the local limiter did not stop a request early
        assert used + served <= limit
        assert used + served + 2 * need > limit
        assert statuses.count(200) == len(statuses) - 1 > 0

        # Redis back: the spool replays and the window's counter is the metered usage
        red.start()
        scope = f"llmgate:q:{{cal-{window}}}:k:{k['id']}"
        field = "d" if window == "tpd" else "m"

        def counted():
            v = red.cmd("HGET", scope, field)
            return v is not None and int(v) == used + served

        wait_until(counted, "the outage's usage in the window counter")
    finally:
        http.close()
        rc = g.proc.stop()
        red.proc.stop()
    assert rc == 0
