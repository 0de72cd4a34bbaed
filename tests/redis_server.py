"""A real `redis-server` (the Debian package) on a free loopback port, in a temporary
directory, with its append-only file on, so a restart keeps what it had acknowledged; with
`tls=True`, TLS only, with a certificate from a CA made here (`openssl`) and a password."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server")


def require_redis_server() -> str:
    """redis-server's path; skips here where it is missing (CI installs it: `.ci/run`)."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    return REDIS_SERVER


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    def __init__(self, directory: Path, *, tls: bool = False, password: str | None = None):
        self.binary = require_redis_server()
        self.directory = directory
        self.port = _free_port()
        self.tls, self.password = tls, password
        auth = f":{password}@" if password else ""
        if tls:
            _make_certificates(directory)
            self.url = (f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_cert_reqs=required"
                        f"&ssl_ca_certs={directory / 'ca.pem'}")  # fmt: skip
        else:
            self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        import redis

        # appendfsync always: a write the client saw acknowledged survives a SIGKILL too.
        args = [self.binary, "--bind", "127.0.0.1", "--dir", str(self.directory),
                "--appendonly", "yes", "--appendfsync", "always", "--save", ""]  # fmt: skip
        if self.tls:
            d = self.directory
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no",
                     "--tls-cert-file", str(d / "server.pem"),
                     "--tls-key-file", str(d / "server.key"),
                     "--tls-ca-cert-file", str(d / "ca.pem")]  # fmt: skip
        else:
            args += ["--port", str(self.port)]
        if self.password:
            args += ["--requirepass", self.password]
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with redis.Redis.from_url(self.url, socket_timeout=1) as client:
                    if client.ping():
                        return self
            except (redis.RedisError, OSError):
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError((self.directory / "redis.log").read_text(errors="replace"))

    def stop(self, kill: bool = False) -> None:
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        self.process.wait(20)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def keys(self, pattern: str) -> list[bytes]:
        """KEYS over a plain socket (the tests' check that nothing was left behind)."""
        import redis

        with redis.Redis.from_url(self.url) as client:
            return sorted(client.keys(pattern))


def _make_certificates(directory: Path) -> None:
    """A CA and a server certificate for 127.0.0.1 it signed (openssl; CI installs it)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed (apt-get install openssl)")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=asrd-test-ca")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.ext")  # fmt: skip
