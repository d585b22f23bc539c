"""A real Visdom server started through capsnet.dashboard on a free loopback port."""
from __future__ import annotations

import json
import socket
import subprocess
import urllib.request
import sys
import time
from pathlib import Path

from capsnet.dashboard.server import answers

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, port: int, env_path: Path) -> None:
        self.port, self.env_path, self.process = port, env_path, None

    def start(self) -> Server:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "capsnet.dashboard", "--port", str(self.port),
             "--env-path", str(self.env_path)], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while not answers("127.0.0.1", self.port):
            assert self.process.poll() is None, self.process.communicate()[0]
            assert time.monotonic() < deadline, "the dashboard server did not start"
            time.sleep(0.2)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


def client(port: int, env: str):
    import logging

    import visdom
    logging.getLogger("visdom").setLevel(logging.CRITICAL)
    return visdom.Visdom(port=port, env=env, raise_exceptions=True, use_incoming_socket=False)


def environments(port: int) -> list[str]:
    """The server's environments, asked over HTTP (a Visdom client would create one)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/env_state", data=b"{}")
    return json.loads(urllib.request.urlopen(request, timeout=10).read())
