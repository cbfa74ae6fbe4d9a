"""Fixtures for integration tests: real processes on free loopback ports.

The mock upstream (llmgate-mock) stands in for third-party APIs; the gateway is
the real binary. Readiness is awaited by polling, never by sleeping blindly.
"""
import hashlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import openai
import pytest

BUILDDIR = Path(os.environ.get("LLMGATE_BUILDDIR", Path(__file__).resolve().parents[2] / "build"))
SRCDIR = Path(os.environ.get("LLMGATE_SRCDIR", Path(__file__).resolve().parents[2]))
API_KEY = "sk-test-" + "a1" * 16
WAIT_S = 20.0  # bound on waiting for a process to come up or a condition to hold


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(cond, what, timeout=WAIT_S, interval=0.02):
    """Polls cond() until it is truthy; fails the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


class Proc:
    """A child process whose stderr goes to a log file; stop() checks its exit."""

    def __init__(self, argv, log_path, env=None):
        self.log_path = Path(log_path)
        self.log = open(self.log_path, "wb")
        self.p = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                  env={**os.environ, **(env or {})})

    def alive(self):
        return self.p.poll() is None

    def send(self, sig):
        self.p.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()
        return self.p.returncode

    def output(self):
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")


class Mock:
    def __init__(self, tmp, *extra):
        port_file = tmp / f"mock-{id(self)}.port"
        self.proc = Proc([str(BUILDDIR / "llmgate-mock"), "--port", "0", "--port-file", str(port_file),
                          "--quiet", *extra], tmp / f"mock-{id(self)}.log")
        self.port = int(wait_until(lambda: port_file.exists() and port_file.read_text().strip(),
                                   "mock port file"))
        self.url = f"http://127.0.0.1:{self.port}"

    def stats(self):
        return httpx.get(self.url + "/mock/stats", timeout=5).json()

    def reset(self):
        httpx.post(self.url + "/mock/reset", timeout=5)


class Gateway:
    def __init__(self, tmp, mock_url, workers=2, extra_conf=None, name="gw"):
        self.tmp = tmp
        self.port = free_port()
        self.conf_path = tmp / f"{name}.conf"
        self.access_log = tmp / f"{name}-access.log"
        self.conf = default_conf(mock_url, self.port, workers, self.access_log)
        if extra_conf:
            deep_update(self.conf, extra_conf)
        self.write_conf(self.conf)
        self.proc = Proc([str(BUILDDIR / "llmgate"), "-c", str(self.conf_path)], tmp / f"{name}.log")
        self.url = f"http://127.0.0.1:{self.port}"
        wait_until(self._healthy, "gateway /healthz")

    def write_conf(self, conf, raw=None):
        tmp = self.conf_path.with_suffix(".tmp")
        tmp.write_text(raw if raw is not None else json.dumps(conf, indent=2))
        tmp.replace(self.conf_path)

    def _healthy(self):
        if not self.proc.alive():
            raise AssertionError("gateway exited:\n" + self.proc.output())
        try:
            return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def client(self, key=API_KEY, **kw):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, **kw)


def default_conf(mock_url, port, workers, access_log):
    return {
        "listen": {"address": "127.0.0.1", "port": port},
        "workers": workers,
        "log": {"level": "info", "access_log": str(access_log)},
        "limits": {"max_body_bytes": 65536, "drain_timeout_ms": 10000},
        "auth": {"api_keys_sha256": [hashlib.sha256(API_KEY.encode()).hexdigest()]},
        "providers": {
            "mock": {"kind": "openai", "base_url": mock_url + "/v1", "forward_headers": "x-mock-*",
                     "api_key_env": "LLMGATE_TEST_UPSTREAM_KEY",
                     "first_byte_timeout_ms": 1500, "idle_timeout_ms": 1500},
        },
        "models": {
            "mock-model": {"provider": "mock", "model": "upstream-model"},
            "text-embedding-3-small": {"provider": "mock", "model": "mock-embedding"},
        },
    }


def deep_update(dst, src):
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            deep_update(dst[k], v)
        else:
            dst[k] = v


@pytest.fixture(scope="session", autouse=True)
def _binaries_exist():
    for b in ("llmgate", "llmgate-mock"):
        assert (BUILDDIR / b).exists(), f"{BUILDDIR / b} missing: build first"
    os.environ["LLMGATE_TEST_UPSTREAM_KEY"] = "sk-upstream-secret"


@pytest.fixture(scope="module")
def tmp_mod(tmp_path_factory):
    return tmp_path_factory.mktemp("it")


@pytest.fixture(scope="module")
def model_dir(tmp_mod):
    """A tiny random-weight Qwen2-shaped model made by `llmgate-engine mkmodel`."""
    d = tmp_mod / "tiny-model"
    subprocess.run([str(BUILDDIR / "llmgate-engine"), "mkmodel", "--preset", "qwen2-tiny",
                    "--out", str(d)], check=True, capture_output=True)
    return d


@pytest.fixture(scope="module")
def mock(tmp_mod):
    m = Mock(tmp_mod)
    yield m
    m.proc.stop()


@pytest.fixture(scope="module")
def gateway(tmp_mod, mock):
    g = Gateway(tmp_mod, mock.url)
    yield g
    rc = g.proc.stop()
    # A clean drain exits 0; under ASan a leak or error report makes this non-zero.
    assert rc == 0, f"gateway exited {rc}:\n{g.proc.output()[-4000:]}"


@pytest.fixture
def client(gateway):
    return gateway.client()


# ------------------------------------------------------------------ a private Redis

class RedisServer:
    """A private redis-server on a free port. With appendfsync always, a SIGKILL
    loses nothing that was acknowledged, so a kill + restart test sees the data."""

    def __init__(self, tmp, name="redis"):
        self.dir = tmp / f"{name}-data"
        self.dir.mkdir(exist_ok=True)
        self.port = free_port()
        self.log_path = tmp / f"{name}.log"
        self.proc = None
        self.start()

    def start(self):
        self.proc = Proc(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                          "--save", "", "--appendonly", "yes", "--appendfsync", "always",
                          "--dir", str(self.dir), "--loglevel", "warning"], self.log_path)
        wait_until(self._up, "redis-server")

    def _up(self):
        if not self.proc.alive():
            raise AssertionError("redis-server exited:\n" + self.proc.output())
        try:
            return self.cmd("PING") == "PONG"
        except (OSError, RuntimeError):  # not listening yet, or LOADING
            return False

    def kill(self):
        self.proc.stop(signal.SIGKILL)

    def cmd(self, *args):
        """One command over RESP; returns str/int/list/None, raises on an error reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            out = b"*%d\r\n" % len(args)
            for a in args:
                a = a if isinstance(a, bytes) else str(a).encode()
                out += b"$%d\r\n%s\r\n" % (len(a), a)
            s.sendall(out)
            f = s.makefile("rb")
            return _resp_read(f)


def _resp_read(f):
    line = f.readline()
    if not line:
        raise OSError("redis closed the connection")
    t, rest = line[:1], line[1:-2]
    if t == b"+":
        return rest.decode()
    if t == b"-":
        raise RuntimeError(rest.decode())
    if t == b":":
        return int(rest)
    if t == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)[:-2]
        return data.decode(errors="replace")
    if t == b"*":
        n = int(rest)
        return None if n < 0 else [_resp_read(f) for _ in range(n)]
    raise OSError(f"bad RESP line {line!r}")


@pytest.fixture(scope="module")
def redis_server(tmp_mod):
    if subprocess.run(["sh", "-c", "command -v redis-server"], capture_output=True).returncode:
        pytest.skip("redis-server not installed")
    r = RedisServer(tmp_mod)
    yield r
    r.proc.stop()


def raw_post(port, path, payload, headers):
    """Sends one POST on a new socket (no client library: tests that reset or abandon
    the connection at a chosen moment) and returns the socket."""
    s = socket.create_connection(("127.0.0.1", port))
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    s.sendall((f"POST {path} HTTP/1.1\r\nHost: x\r\n{head}Content-Type: application/json\r\n"
               f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload.encode())
    return s


def script_waiting(redis):
    """Whether exactly one client waits on a script (EVALSHA) held by CLIENT PAUSE WRITE."""
    return ("cmd=evalsha" in redis.cmd("CLIENT", "LIST") and
            int(redis.cmd("INFO", "clients").split("blocked_clients:")[1].split()[0]) == 1)
