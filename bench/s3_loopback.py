"""A loopback S3 server (moto) and a request-counting, fault-injecting proxy (ledger bench, s3:// tests).

The tests import it by name: tests/conftest.py puts bench/ on the path.

Nothing here can reach past loopback: ``s3_env`` points the AWS variables at
the local server and HTTP(S)_PROXY at a dead loopback port, with only
127.0.0.1/localhost exempt, so a forgotten code path fails fast.
"""

import contextlib
import http.client
import http.server
import os
import socket
import subprocess
import sys
import threading

import boto3
from loopback import (
    free_port,
    wait_for_port,
)  # bench/ (the script's directory, or via tests/conftest.py)


@contextlib.contextmanager
def moto_server(extra_env=None):
    """Runs ``moto_server`` on 127.0.0.1 with a free port; yields its endpoint URL; kills it in finally."""
    port = free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "moto_server")
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, **(extra_env or {})),
    )
    try:
        wait_for_port(port, proc, "moto_server")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(timeout=10)


def s3_env(endpoint: str, key: str = "testing", secret: str = "testing") -> dict:
    """The environment a user of an S3-compatible server sets, plus the loopback-only proxy guard."""
    dead = f"http://127.0.0.1:{free_port()}"
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": "us-east-1",
        "HTTP_PROXY": dead,
        "HTTPS_PROXY": dead,
        "http_proxy": dead,
        "https_proxy": dead,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


def make_bucket(endpoint: str, bucket: str):
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).create_bucket(Bucket=bucket)


class FaultProxy:
    """A reverse proxy to ``upstream`` that counts requests and fails chosen ones.

    ``fail(i)`` decides for the i-th request (0-based): None forwards it,
    "503" answers 503 SlowDown without forwarding, "drop" closes the
    connection without an answer (before forwarding).
    """

    def __init__(self, upstream: str, fail=lambda i: None):
        self.upstream = upstream[len("http://") :]
        self.fail = fail
        self.counts = {}
        self._n = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy._lock:
                    i = proxy._n
                    proxy._n += 1
                    proxy.counts[self.command] = proxy.counts.get(self.command, 0) + 1
                action = proxy.fail(i)
                if action == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if action == "503":
                    msg = b"<Error><Code>SlowDown</Code><Message>injected</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in (
                        "content-length",
                        "connection",
                        "transfer-encoding",
                        "server",
                        "date",
                    ):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def requests(self) -> int:
        return self._n

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()
