"""Admission grants (quota.grant_ms): a worker takes a steady key's next tokens
from Redis ahead of demand and admits from them without a round trip.

What must still hold: two gateways with grants on keep tight per-key and
per-tenant token quotas under 400 concurrent requests, meter exactly what the
mock served, and once the unspent grants are given back, Redis's day counters
equal the metered usage to the token. Conditions are polled, never slept on.
"""
import re

import httpx
import pytest

from conftest import Gateway, wait_until
from test_quota import MSGS, fire, make_key, quota_conf, records

GRANT_MS = 300


def grant_conf(redis, spool):
    return quota_conf(redis, spool, quota={"grant_ms": GRANT_MS})


def counter(gw, name):
    text = httpx.get(gw.url + "/metrics", timeout=5).text
    m = re.search(r"^%s (\d+)$" % re.escape(name), text, re.M)
    assert m, name
    return int(m.group(1))


def day_used(redis, bucket):
    v = redis.cmd("HGET", bucket, "d")
    return int(float(v)) if v is not None else 0


@pytest.fixture(scope="module")
def gws(tmp_mod, mock, redis_server):
    pair = [Gateway(tmp_mod, mock.url, name=f"gwg{i}",
                    extra_conf=grant_conf(redis_server, tmp_mod / f"spool-g{i}"))
            for i in range(2)]
    yield pair
    for g in pair:
        assert g.proc.stop() == 0, g.proc.output()[-4000:]


def test_steady_key_is_admitted_from_grants(gws, redis_server):
    """Back-to-back requests of one key: after the first few, admitted locally,
    each still with its rate-limit headers and usage record; the day counter
    comes back to exactly the metered usage once the grant is given back."""
    gw = gws[0]
    k = make_key(gw, "grant-steady", limits={"tpd": 1000000, "tpm": 1000000, "rpm": 100000})
    before = counter(gw, "llmgate_quota_grant_admits_total")
    with httpx.Client(base_url=gw.url, timeout=10,
                      headers={"Authorization": f"Bearer {k['key']}"}) as c:
        for _ in range(60):
            r = c.post("/v1/chat/completions",
                       json={"model": "mock-model", "messages": MSGS, "max_tokens": 12})
            assert r.status_code == 200, r.text
            assert r.headers["x-ratelimit-limit-tokens"] == "1000000"
            assert 0 < int(r.headers["x-ratelimit-remaining-tokens"]) <= 1000000
            assert 0 < int(r.headers["x-ratelimit-remaining-requests"]) <= 100000
    assert counter(gw, "llmgate_quota_grant_admits_total") - before > 30

    def mine():
        return [x for x in records(redis_server) if x["key_id"] == k["id"]]
    recs = wait_until(lambda: len(mine()) == 60 and mine(), "60 usage records")
    used = sum(int(x["prompt_tokens"]) + int(x["completion_tokens"]) for x in recs)
    bucket = f"llmgate:q:{{grant-steady}}:k:{k['id']}"
    wait_until(lambda: day_used(redis_server, bucket) == used,
               "the day counter back to the metered usage (grant given back)")
    assert counter(gw, "llmgate_quota_grant_returned_tokens_total") > 0


def test_two_gateways_with_grants_hold_tight_quotas(gws, mock, redis_server):
    """400 concurrent requests over 4 keys of one tenant, through two gateways
    with grants: no key or tenant admits more than its day limit plus one
    request's reservation, usage equals what the mock served, and the day
    counters end equal to the metered usage."""
    tpd, tenant_tpd = 1000, 3000  # 400 requests reserving 16-31 tokens each: well over
    keys = [make_key(gws[0], "grant-tight", tenant_limits={"tpd": tenant_tpd},
                     limits={"tpd": tpd}) for _ in range(4)]
    ids = {k["id"] for k in keys}
    mock.reset()
    admits = sum(counter(g, "llmgate_quota_grant_admits_total") for g in gws)
    jobs = [(keys[i % 4], gws[i // 4 % 2], 5 + i % 16) for i in range(400)]
    statuses = fire(jobs, 32)
    assert set(statuses) <= {200, 429} and statuses.count(429) > 0
    assert sum(counter(g, "llmgate_quota_grant_admits_total") for g in gws) > admits

    def mine():
        return [x for x in records(redis_server) if x["key_id"] in ids]
    recs = wait_until(lambda: len(mine()) == len(jobs) and mine(), "a usage record per request")
    largest = (len("Say hello") + 3) // 4 + 8 + 20
    ok = [x for x in recs if x["status"] == "200"]
    assert len(ok) == statuses.count(200)
    total = 0
    for k in keys:
        used = sum(int(x["prompt_tokens"]) + int(x["completion_tokens"])
                   for x in ok if x["key_id"] == k["id"])
        assert used <= tpd + largest, (k["id"], used)
        bucket = f"llmgate:q:{{grant-tight}}:k:{k['id']}"
        wait_until(lambda: day_used(redis_server, bucket) == used,
                   f"key {k['id']}: day counter equal to its metered usage")
        total += used
    assert total <= tenant_tpd + largest
    wait_until(lambda: day_used(redis_server, "llmgate:q:{grant-tight}:t") == total,
               "the tenant's day counter equal to the metered usage")
    s = mock.stats()["usage"]
    assert sum(int(x["prompt_tokens"]) for x in ok) == s["prompt_tokens"]
    assert sum(int(x["completion_tokens"]) for x in ok) == s["completion_tokens"]


def test_own_grant_never_causes_a_429(tmp_mod, mock, redis_server):
    """A request larger than what this worker's grant still holds, but within what
    the key has left counting that grant, is admitted: the worker gives its grant
    back and asks again instead of refusing."""
    g = Gateway(tmp_mod, mock.url, name="gwg-one", workers=1,
                extra_conf=quota_conf(redis_server, tmp_mod / "spool-g-one",
                                      quota={"grant_ms": 10000}))
    try:
        k = make_key(g, "grant-own", limits={"tpd": 8000})
        bucket = f"llmgate:q:{{grant-own}}:k:{k['id']}"

        def settled():
            return [x for x in records(redis_server) if x["key_id"] == k["id"]]

        with httpx.Client(base_url=g.url, timeout=10,
                          headers={"Authorization": f"Bearer {k['key']}"}) as c:
            held = 0
            for i in range(1, 101):  # until the worker holds a grant of 40+ tokens
                r = c.post("/v1/chat/completions",
                           json={"model": "mock-model", "messages": MSGS, "max_tokens": 40})
                assert r.status_code == 200, r.text
                recs = wait_until(lambda: len(settled()) == i and settled(), "settled")
                used = sum(int(x["prompt_tokens"]) + int(x["completion_tokens"]) for x in recs)
                held = day_used(redis_server, bucket) - used  # debited on Redis, not yet spent
                if held >= 40:
                    break
            assert held >= 40
            # more than Redis has left outside the grant, less than with it
            n = 8000 - day_used(redis_server, bucket) + held // 2
            prompt = (len("Say hello") + 3) // 4 + 8
            r = c.post("/v1/chat/completions",
                       json={"model": "mock-model", "messages": MSGS, "max_tokens": n - prompt})
            assert r.status_code == 200, r.text
    finally:
        assert g.proc.stop() == 0, g.proc.output()[-4000:]
