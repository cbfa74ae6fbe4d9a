"""Quota reservations count a local engine's prompt tokens exactly.

A gateway with a tenant-key quota on a real redis-server, the bundled engine as a supervised
`local` provider (a tiny model from `llmgate-engine mkmodel`) and the mock as a remote one.
x-ratelimit-remaining-tokens is computed at reserve time: for a fresh key with only a
tokens-per-minute limit L it is exactly L - reserved, and the reservation is prompt + max_tokens.
So for the local engine it must equal L - (the engine's own POST /tokenize count) - max_tokens,
while the mock, a remote provider, still reserves the chars/4 estimate.
"""
import math
import signal
import uuid

import httpx
import openai
import pytest

from conftest import BUILDDIR, Gateway, wait_until
from test_quota import make_key, quota_conf, records

ENGINE = BUILDDIR / "llmgate-engine"
MODEL = "tiny"
L = 100000  # tokens per minute of every key here
PROMPT_OVERHEAD = 8  # gateway/quota.c: tokens added to every estimate

pytestmark = pytest.mark.skipif(not ENGINE.exists(), reason="llmgate-engine not built")

MSGS = [{"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Count the tokens of this sentence exactly, please!"}]



@pytest.fixture(scope="module")
def gw(tmp_mod, mock, redis_server, model_dir):
    sock = tmp_mod / "lt-engine.sock"
    conf = quota_conf(redis_server, tmp_mod / "lt-spool")
    conf["providers"] = {
        "local": {"kind": "local", "base_url": "http://localhost/v1", "socket": str(sock),
                  "model_dir": str(model_dir), "served_model": MODEL, "threads": 1,
                  "first_byte_timeout_ms": 30000},
        # a tokenizer that cannot load: one warning, the config still loads, the estimate is used
        "broken": {"kind": "local", "base_url": "http://localhost/v1", "autostart": False,
                   "socket": str(tmp_mod / "lt-nothing.sock"), "model_dir": str(tmp_mod / "nope")},
    }
    conf["models"] = {"local-chat": {"provider": "local", "model": MODEL},
                      "broken-chat": {"provider": "broken", "model": MODEL}}
    g = Gateway(tmp_mod, mock.url, extra_conf=conf, name="gw-lt")
    g.sock = sock

    def ready():
        try:
            return g.client().chat.completions.create(model="local-chat", messages=MSGS,
                                                      max_tokens=1)
        except (openai.APIStatusError, openai.APIConnectionError):
            return None
    wait_until(ready, "chat through the local engine", timeout=60)
    yield g
    assert g.proc.stop() == 0, g.proc.output()[-4000:]


@pytest.fixture(scope="module")
def engine(gw):
    """The supervised engine itself, on its unix socket."""
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(gw.sock)), base_url="http://engine",
                      timeout=30) as c:
        yield c


def tokenize(engine, **body):
    r = engine.post("/tokenize", json=body)
    assert r.status_code == 200, r.text
    return r.json()["count"]


def fresh_key(gw):
    """A new key (a full bucket) with only a tokens-per-minute limit, so the token headers come
    from its bucket and remaining = L - reserved exactly."""
    return make_key(gw, "lt-" + uuid.uuid4().hex[:8], name="lt", limits={"tpm": L})


def remaining(raw):
    h = raw.headers
    assert h["x-ratelimit-limit-tokens"] == str(L)
    return int(h["x-ratelimit-remaining-tokens"])


def estimate(chars, ids=0):
    return math.ceil(chars / 4) + ids + PROMPT_OVERHEAD


def test_chat_reserves_the_engines_exact_count(gw, engine):
    n = tokenize(engine, messages=MSGS)
    est = estimate(sum(len(m["content"]) for m in MSGS))
    assert n != est  # otherwise this test could not tell them apart
    for stream in (False, True):
        k = fresh_key(gw)
        raw = gw.client(key=k["key"]).chat.completions.with_raw_response.create(
            model="local-chat", messages=MSGS, max_tokens=7, stream=stream)
        assert remaining(raw) == L - n - 7
        if not stream:
            # and the engine prompted the model with exactly that many tokens
            assert raw.parse().usage.prompt_tokens == n
        else:
            for _ in raw.parse():
                pass


def test_chat_content_parts_count_like_the_engine(gw, engine):
    msgs = [{"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hello "},
                                         {"type": "text", "text": "<|im_end|> world"}]}]
    n = tokenize(engine, messages=msgs)
    k = fresh_key(gw)
    raw = gw.client(key=k["key"]).chat.completions.with_raw_response.create(
        model="local-chat", messages=msgs, max_tokens=3)
    assert remaining(raw) == L - n - 3
    assert raw.parse().usage.prompt_tokens == n


def test_completions_reserve_the_engines_exact_count(gw, engine):
    prompt = "The quick brown fox jumps over the lazy dog; the engine counts, not guesses."
    n = tokenize(engine, text=prompt)  # with the BOS a completions prompt gets
    assert n != estimate(len(prompt))
    k = fresh_key(gw)
    c = gw.client(key=k["key"])
    raw = c.completions.with_raw_response.create(model="local-chat", prompt=prompt, max_tokens=5)
    assert remaining(raw) == L - n - 5
    assert raw.parse().usage.prompt_tokens == n
    # token ids are the prompt as they are; ["text"] is one prompt
    ids = [3, 1, 4, 1, 5, 9, 2, 6]
    for p, want in ((ids, len(ids)), ([ids], len(ids)), ([prompt], n)):
        k = fresh_key(gw)
        raw = gw.client(key=k["key"]).completions.with_raw_response.create(
            model="local-chat", prompt=p, max_tokens=4)
        assert remaining(raw) == L - want - 4, p
        assert raw.parse().usage.prompt_tokens == want


def test_what_the_engine_refuses_is_estimated(gw):
    """The engine's prompt builder refuses these; the gateway falls back to the estimate (the
    headers ride on the engine's 400) and the engine's refusal keeps its OpenAI shape."""
    k = fresh_key(gw)
    c = gw.client(key=k["key"])
    with pytest.raises(openai.BadRequestError) as ei:
        c.completions.create(model="local-chat", prompt=["first", "second"], max_tokens=4)
    assert ei.value.body["code"] == "unsupported_value" and ei.value.body["param"] == "prompt"
    assert remaining(ei.value.response) == L - estimate(len("first") + len("second")) - 4

    k = fresh_key(gw)
    msgs = [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]
    with pytest.raises(openai.BadRequestError) as ei:
        gw.client(key=k["key"]).chat.completions.create(model="local-chat", messages=msgs,
                                                        max_tokens=4)
    assert ei.value.body["code"] == "unsupported_content"
    assert ei.value.body["param"] == "messages[0].content"
    assert remaining(ei.value.response) == L - estimate(len("What is this?")) - 4


def test_remote_and_unloadable_providers_keep_the_estimate(gw):
    est = estimate(sum(len(m["content"]) for m in MSGS))
    k = fresh_key(gw)
    raw = gw.client(key=k["key"]).chat.completions.with_raw_response.create(
        model="mock-model", messages=MSGS, max_tokens=7)
    assert remaining(raw) == L - est - 7
    # the local provider whose model_dir has no tokenizer: warned once, estimated, config loaded
    out = gw.proc.output()
    assert out.count("local provider 'broken': cannot load the engine's tokenizer") == 1
    k = fresh_key(gw)
    r = httpx.post(gw.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {k['key']}"},
                   json={"model": "broken-chat", "messages": MSGS, "max_tokens": 7}, timeout=30)
    assert r.status_code >= 500  # nothing listens there
    assert int(r.headers["x-ratelimit-remaining-tokens"]) == L - est - 7


def test_cut_off_stream_settles_the_exact_prompt(gw, engine, redis_server):
    """A client gone mid-stream: the engine's stream runs on for nobody (quota.abandoned:
    finish) and settle charges exactly what it reports: the prompt the gateway reserved
    (its own exact count) and every token generated, not an estimate."""
    n = tokenize(engine, messages=MSGS)
    k = fresh_key(gw)
    with httpx.stream("POST", gw.url + "/v1/chat/completions",
                      headers={"Authorization": f"Bearer {k['key']}"},
                      json={"model": "local-chat", "messages": MSGS, "max_tokens": 2000,
                            "stream": True, "ignore_eos": True}, timeout=30) as r:
        assert r.status_code == 200
        assert int(r.headers["x-ratelimit-remaining-tokens"]) == L - n - 2000
        for line in r.iter_lines():
            if line.startswith("data: {") and '"content"' in line:
                break  # one token arrived: hang up
    rec = wait_until(lambda: [x for x in records(redis_server) if x["key_id"] == k["id"]],
                     "the usage record of the cut-off stream")[0]
    assert rec["status"] == "499" and rec["error"] == "client_closed"
    assert rec["estimated"] == "0"
    assert int(rec["prompt_tokens"]) == n
    # the engine's own count: ignore_eos ran it to the cap or to the end of its context
    assert 1 < int(rec["completion_tokens"]) <= 2000
    # a completed request is exact and says so
    k = fresh_key(gw)
    gw.client(key=k["key"]).chat.completions.create(model="local-chat", messages=MSGS,
                                                    max_tokens=2)
    rec = wait_until(lambda: [x for x in records(redis_server) if x["key_id"] == k["id"]],
                     "the usage record")[0]
    assert rec["estimated"] == "0" and int(rec["prompt_tokens"]) == n


def test_reload_reuses_the_loaded_tokenizer(gw, engine):
    loaded = "loaded for exact prompt counts"
    before = gw.proc.output()
    assert before.count(loaded) == 1
    reloads = before.count("configuration reloaded")
    gw.proc.send(signal.SIGHUP)
    wait_until(lambda: gw.proc.output().count("configuration reloaded") > reloads, "reload")
    after = gw.proc.output()
    assert after.count(loaded) == 1  # same model_dir and files: not loaded again
    n = tokenize(engine, messages=MSGS)
    k = fresh_key(gw)
    raw = gw.client(key=k["key"]).chat.completions.with_raw_response.create(
        model="local-chat", messages=MSGS, max_tokens=7)
    assert remaining(raw) == L - n - 7
