"""The local Triton: the real `tritonserver` binary shipped in the `nvidia-pytriton` wheel.

`TritonServer` is the local half of the server interface (in a cluster the operator deploys the
official image instead). It prepares the Python backend directory with the stub for the running
interpreter, sets the library path the wheel needs, binds HTTP/gRPC/metrics to free loopback ports,
waits for readiness, keeps the log, and turns a model that fails to load into an error naming the
model and Triton's reason.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import psutil
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from slimserve.errors import InvalidInput, ServingError
from slimserve.processes import ManagedProcess, free_port, port_in_use, wait_until

ENV_BINARY: Final = "SLIMSERVE_TRITONSERVER"
INSTALL_HINT: Final = "install the serving extra (pip install 'nvidia-pytriton==0.7.0') or set SLIMSERVE_TRITONSERVER"
_LOAD_FAILURE = re.compile(r"failed to load '([^']+)' version \d+: (.*?)\"?$", re.MULTILINE)


class PortTaken(ServingError):
    """Another process bound one of Triton's ports between the choice and the start."""


@dataclass(frozen=True)
class TritonInstall:
    """Where the wheel keeps the binary, its libraries, the Python backend and the stubs."""

    binary: Path
    libs: Path
    python_backend: Path
    stub: Path


def find_triton() -> TritonInstall:
    """Locate the wheel's Triton (or the binary named by SLIMSERVE_TRITONSERVER); ServingError if absent."""
    override = os.environ.get(ENV_BINARY)
    if override:
        binary = Path(override)
        root = binary.parent.parent
    else:
        spec = importlib.util.find_spec("pytriton")
        if spec is None or spec.origin is None:
            raise ServingError(f"Triton is missing: the 'pytriton' package is not installed; {INSTALL_HINT}")
        root = Path(spec.origin).parent / "tritonserver"
        binary = root / "bin" / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    install = TritonInstall(
        binary=binary,
        libs=root.parent.parent / "nvidia_pytriton.libs",
        python_backend=root / "backends" / "python",
        stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
    )
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise ServingError(f"Triton is missing: no executable tritonserver at {binary}; {INSTALL_HINT}")
    if not install.stub.is_file():
        raise ServingError(
            f"Triton's Python backend has no stub for Python {version} at {install.stub}; "
            "use Python 3.8-3.13 or a matching nvidia-pytriton"
        )
    return install


def prepare_backend_dir(install: TritonInstall, work_dir: Path) -> Path:
    """A `--backend-directory` whose `python/` holds the backend library, its utils and our stub."""
    python_dir = work_dir / "backends" / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for source in (
        install.python_backend / "libtriton_python.so",
        install.python_backend / "triton_python_backend_utils.py",
        install.stub,
    ):
        target = python_dir / source.name
        if target.is_symlink() or target.exists():
            target.unlink()
        target.symlink_to(source.resolve())
    return python_dir.parent


def parse_load_failures(log_text: str) -> dict[str, str]:
    """Model name → Triton's reason, from its log ("failed to load 'm' version 1: ...")."""
    failures: dict[str, str] = {}
    for name, reason in _LOAD_FAILURE.findall(log_text):
        # Triton logs the message JSON-escaped on one line; drop the Python traceback after "At:".
        text = reason.replace('\\"', '"').split("\\n\\nAt:")[0].replace("\\n", " ")
        failures.setdefault(name, text.strip())
    return failures


class TritonServer:
    """One local tritonserver process serving `repo_dir`; use as a context manager."""

    def __init__(
        self,
        repo_dir: Path,
        work_dir: Path,
        *,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        startup_timeout: float = 90.0,
    ) -> None:
        self.repo_dir = repo_dir
        self.work_dir = work_dir
        for flag, port in (("http", http_port), ("grpc", grpc_port), ("metrics", metrics_port)):
            if port is not None and port_in_use(port):
                raise InvalidInput(
                    f"Triton {flag} port = {port}: already in use on 127.0.0.1; stop what holds it or pick another"
                )
        self._fixed_ports = any(port is not None for port in (http_port, grpc_port, metrics_port))
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.startup_timeout = startup_timeout
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def metrics_target(self) -> str:
        return f"127.0.0.1:{self.metrics_port}"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "triton.log"

    def start(self) -> TritonServer:
        """Start Triton and wait until it is ready. Free ports are picked before Triton binds them, so
        another process can take one in between: then new ports are picked, twice at most."""
        for attempt in range(3):
            try:
                return self._start_once()
            except PortTaken:
                if self._fixed_ports or attempt == 2:
                    raise
                self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        raise AssertionError("unreachable")

    def _start_once(self) -> TritonServer:
        install = find_triton()
        backends = prepare_backend_dir(install, self.work_dir)
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(install.libs), env.get("LD_LIBRARY_PATH")) if p)
        # The stub embeds the system libpython: point it at this interpreter's packages (the venv's).
        env["PYTHONPATH"] = os.pathsep.join(p for p in [*sys.path[1:], env.get("PYTHONPATH", "")] if p)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.setdefault("OMP_NUM_THREADS", "1")
        argv = [
            str(install.binary),
            f"--model-repository={self.repo_dir}",
            f"--backend-directory={backends}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--metrics-config=summary_latencies=true",
            "--exit-on-error=true",
            "--strict-readiness=true",
            "--exit-timeout-secs=5",
            "--backend-config=python,shm-default-byte-size=4194304",
            "--backend-config=python,shm-growth-byte-size=4194304",
            "--log-verbose=0",
        ]
        self.process = ManagedProcess("triton", argv, self.log_path, env=env)
        ready = wait_until(lambda: self._ready() or not self.process.alive(), self.startup_timeout)  # type: ignore[union-attr]
        if self.process.alive() and ready:
            return self
        self._raise_start_failure(timed_out=not ready)
        raise AssertionError("unreachable")

    def _raise_start_failure(self, timed_out: bool) -> None:
        assert self.process is not None
        if timed_out:
            self.process.stop()
        else:
            self.process.wait(10)
            self.process.stop()
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        failures = parse_load_failures(text)
        if failures:
            raise InvalidInput(
                [f"model '{name}' failed to load in Triton: {reason}" for name, reason in failures.items()]
                + [f"see {self.log_path}"]
            )
        if "Address already in use" in text or "failed to start" in text.lower():
            raise PortTaken(
                f"Triton could not bind its ports (http {self.http_port}, grpc {self.grpc_port}, metrics "
                f"{self.metrics_port}): another process took one; retry. Log: {self.log_path}"
            )
        what = f"was not ready after {self.startup_timeout:.0f} s" if timed_out else "exited during start-up"
        tail = "\n".join(text.splitlines()[-15:])
        raise ServingError(f"Triton {what}; log {self.log_path}:\n{tail}")

    def client(self, timeout: float = 2.0) -> triton_http.InferenceServerClient:
        """tritonclient's HTTP client for this server (health, metadata, inference)."""
        return triton_http.InferenceServerClient(
            self.url.removeprefix("http://"), connection_timeout=timeout, network_timeout=timeout
        )

    def _ready(self) -> bool:
        try:
            with contextlib.closing(self.client()) as client:
                return bool(client.is_server_ready())
        except (InferenceServerException, OSError):
            return False

    def check_alive(self) -> None:
        """Raise ServingError with the log's tail if Triton died (called between stages)."""
        if self.process is None or not self.process.alive():
            tail = self.process.log_tail(15) if self.process else ""
            raise ServingError(f"Triton is no longer running; log {self.log_path}:\n{tail}")

    def model_processes(self, model: str) -> list[int]:
        """Pids of the Python-backend stubs that run `model`'s instances (children of this Triton)."""
        if self.process is None:
            return []
        found = []
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(self.process.pid).children():
                try:
                    argv = child.cmdline()
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                stub = len(argv) >= 2 and argv[0].endswith("triton_python_backend_stub")
                if stub and Path(argv[1]).parent.parent.name == model:
                    found.append(child.pid)
        return found

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=15)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
