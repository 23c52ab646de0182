"""Run the viewer with uvicorn, on 127.0.0.1 unless another address is asked for explicitly."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from wsi_mil.errors import ConfigError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def check_port(host: str, port: int) -> None:
    """ConfigError when ``port`` is out of range or already taken on ``host``."""
    if not (0 <= int(port) <= 65535):
        raise ConfigError(f"--port {port}: choose a port between 1 and 65535 (0 picks a free one)")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, int(port)))
        except OSError as exc:
            raise ConfigError(f"--host {host} --port {port}: cannot listen there ({exc.strerror}); choose another "
                              "--port, or a local --host") from None


def serve(app: Any, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, log_level: str = "warning") -> None:
    """Serve ``app`` until interrupted (Ctrl-C)."""
    check_port(host, port)
    uvicorn.run(app, host=host, port=int(port), log_level=log_level, access_log=False)


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port that is free on ``host`` now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_in_thread(app: Any, host: str = DEFAULT_HOST, port: int | None = None) -> Iterator[str]:
    """Serve ``app`` in a background thread (tests, benchmarks); yields the base URL ``http://host:port``."""
    port = free_port(host) if port is None else port
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"viewer did not start on {host}:{port}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
