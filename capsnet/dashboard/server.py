"""The Visdom server: in the foreground (`python -m capsnet.dashboard`), or started in the
background for a training run when none answers."""
from __future__ import annotations

import ipaddress
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .assets import ensure_assets
from ..errors import UserError

ROOT = Path(__file__).resolve().parents[2]  # the folder holding capsnet/, for the server process
DEFAULT_ENV_PATH = str(Path.home() / ".visdom")


def url(host: str, port: int) -> str:
    return f"http://{host}:{port}"


def answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether an HTTP server answers at host:port."""
    try:
        urllib.request.urlopen(url(host, port), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True  # it answered, if only with an error status
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return True


def is_visdom(host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether the server at host:port serves Visdom's page (or its login page)."""
    try:
        with urllib.request.urlopen(url(host, port), timeout=timeout) as response:
            page = response.read(1 << 16)
    except urllib.error.HTTPError as error:
        page = error.read(1 << 16) if error.fp else b""
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return b"visdom" in page.lower()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def credentials() -> tuple[str, str] | None:
    """(username, password) from VISDOM_USERNAME and VISDOM_PASSWORD, when both are set."""
    username, password = os.environ.get("VISDOM_USERNAME"), os.environ.get("VISDOM_PASSWORD")
    return (username, password) if username and password else None


def static_files() -> type:
    """Visdom's StaticFileHandler, but giving `../` links (its /user/style.css) unversioned.

    Visdom's page links the stylesheet served by its /user/ handler as
    static_url("../user/style.css"); tornado >= 6.6 refuses to version a path outside the
    static folder, which turns every page load into a 403.
    """
    from tornado.web import StaticFileHandler

    class StaticFiles(StaticFileHandler):
        @classmethod
        def make_static_url(cls, settings: dict, path: str, include_version: bool = True) -> str:
            return super().make_static_url(settings, path,
                                           include_version and not path.startswith("../"))
    return StaticFiles


def warn_if_exposed(host: str, port: int) -> None:
    if not is_loopback(host):
        print(f"warning: the dashboard listens on {host}:{port}, reachable from other machines"
              + ("" if credentials() else "; set VISDOM_USERNAME and VISDOM_PASSWORD to require "
                 "a login"), file=sys.stderr)


def serve(host: str, port: int, env_path: str = DEFAULT_ENV_PATH) -> None:
    """Run a Visdom server until interrupted, with its page files installed first."""
    ensure_assets()
    from tornado import ioloop
    from visdom.server import app as visdom_app
    from visdom.server.app import Application
    from visdom.server.defaults import DEFAULT_ENV_PATH as COOKIE_DIR
    from visdom.utils.server_utils import hash_password

    warn_if_exposed(host, port)
    user = None
    if credentials():
        username, password = credentials()
        user = {"username": username, "password": hash_password(hash_password(password))}
        cookie = Path(COOKIE_DIR) / "COOKIE_SECRET"  # where Visdom reads it
        if not cookie.exists():
            cookie.parent.mkdir(parents=True, exist_ok=True)
            cookie.write_text(secrets.token_hex(32))
    Path(env_path).mkdir(parents=True, exist_ok=True)
    visdom_app.tornado_settings["static_handler_class"] = static_files()
    visdom_app.tornado_settings["autoreload"] = False  # Visdom turns on debug, which polls files
    app = Application(port=port, env_path=env_path.rstrip("/") + "/", user_credential=user)
    try:
        app.listen(port, address=host, max_buffer_size=1024 ** 3)
    except OSError as error:
        raise UserError(f"the dashboard cannot listen on {host}:{port} ({error.strerror})") from None
    print(f"dashboard: Visdom serving {url(host, port)}" + (" with login" if user else ""),
          flush=True)
    ioloop.IOLoop.current().start()


def start_background(host: str, port: int, log: Path, env_path: str = DEFAULT_ENV_PATH,
                     wait: float = 60.0) -> int:
    """Start `serve` in its own session, which outlives this process; return its pid."""
    ensure_assets()  # here, so that its progress and errors reach the user
    warn_if_exposed(host, port)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    try:
        output = open(log, "ab")
    except OSError as error:
        raise UserError(f"could not write the dashboard server's log {log} "
                        f"({error.strerror or error})") from None
    with output:
        process = subprocess.Popen(
            [sys.executable, "-m", "capsnet.dashboard", "--host", host, "--port", str(port),
             "--env-path", env_path], stdin=subprocess.DEVNULL, stdout=output,
            stderr=subprocess.STDOUT, env=environment, start_new_session=True)
    deadline = time.monotonic() + wait
    try:
        while not answers(host, port):
            if process.poll() is not None:
                raise UserError(f"the dashboard server did not start at {url(host, port)}; "
                                f"see {log}")
            if time.monotonic() > deadline:
                raise UserError(f"the dashboard server did not answer at {url(host, port)} "
                                f"within {wait:.0f} s and was stopped; see {log}")
            time.sleep(0.2)
    except BaseException:  # a timeout, or Ctrl-C while waiting: leave no server behind
        stop(process)
        raise
    return process.pid


def stop(process: subprocess.Popen) -> None:
    """Stop a server started by start_background, with everything in its session."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass
