"""Loopback server helpers shared by bench/ and the tests: a free port, a bounded wait for a listener.

The tests import it by name (tests/conftest.py puts bench/ on the path).
"""

import socket
import time


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc=None, what: str = "server", timeout_s: float = 20.0):
    """Waits (bounded in count and time) until 127.0.0.1:port accepts connections.

    Args:
        port: the port to connect to.
        proc: the server's Popen, if any: its exit ends the wait with an error.
        what: the server's name, for the error message.
        timeout_s: the longest wait.

    Raises:
        RuntimeError: the server exited, or nothing listened in time.
    """
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / 0.05) + 1):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"{what} on port {port} exited with {proc.returncode} before listening"
            )
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
    raise RuntimeError(f"{what}: nothing listens on 127.0.0.1:{port} after {timeout_s} s")
