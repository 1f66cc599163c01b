"""Child processes that never outlive slimserve: Triton, Prometheus, Locust.

A neutral module: the Triton launcher, the Prometheus and Locust drivers all use it, and none of
them owns it. Each child gets its own process group (so Triton's backend stubs and Locust's workers
go with it), a log file, and a parent-death signal (so even `kill -9` of slimserve does not leave it
behind). psutil could list and kill the tree, but not arrange the parent-death signal before exec,
which is what makes `kill -9` safe; so the few lines stay here. Every live child is registered;
`stop_all()` runs at exit (registered when the first child starts, never on import) and from the
SIGTERM handler that `install_signal_handlers()` sets up for the command line.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from slimserve.errors import ServingError

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG: Final = 1
_LIVE: dict[int, ManagedProcess] = {}
_LOCK = threading.Lock()


# Resolved in the parent, once: the child between fork and exec must not load libraries (dlopen takes
# locks another thread of the parent, e.g. rich's spinner, may hold at fork time).
_PRCTL = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)  # Linux only


def _die_with_parent() -> None:  # runs in the child between fork and exec: one system call
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


class ManagedProcess:
    """A child in its own process group, with its output in `log_path`."""

    def __init__(
        self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - only sets a signal, no locks involved
            )
        except OSError as exc:
            self._log.close()
            raise ServingError(f"{name}: cannot start {self.argv[0]}: {exc}") from None
        with _LOCK:
            _LIVE[self.popen.pid] = self
            atexit.unregister(stop_all)  # registered once, however many children start
            atexit.register(stop_all)
        log.debug("started %s pid=%d: %s", name, self.popen.pid, " ".join(self.argv))

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait(self, timeout: float | None = None) -> int:
        return self.popen.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the whole group, SIGKILL what is left after `timeout`; idempotent."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0f s; killing it", self.name, timeout)
        # Members of the group (backend stubs, Locust workers) may outlive the leader: kill them too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        with _LOCK:
            _LIVE.pop(self.popen.pid, None)
        self._log.close()


def live_processes() -> list[ManagedProcess]:
    with _LOCK:
        return list(_LIVE.values())


def stop_all() -> None:
    """Stop every child still registered, newest first (Locust before Prometheus before Triton)."""
    for proc in reversed(live_processes()):
        with contextlib.suppress(Exception):
            proc.stop(timeout=5)


def install_signal_handlers() -> None:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt so `finally` blocks stop the children (CLI only)."""

    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    """Poll `predicate()` until it is true or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
