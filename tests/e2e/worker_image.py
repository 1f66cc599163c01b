"""The worker image without Docker: a venv installed the way docker/worker.Dockerfile installs the image.

The Dockerfile is read, not copied: the extras of its `pip install ".[...]"` line are the ones installed
here, from a staging copy of exactly the files it COPYs, non-editable, and every command runs from
another folder with no PYTHONPATH. A module the worker's commands import but the extra does not
install, or a file they read that the wheel does not ship, fails here as it would in the image.

Building from scratch takes a minute or two (torch, onnxruntime, locust); the venv is kept under
`.e2e/worker-venv` and reused while pyproject.toml and the Dockerfile are unchanged, with slimserve
itself reinstalled (non-editable) from the current tree every run.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[2]
DOCKERFILE: Final = ROOT / "docker" / "worker.Dockerfile"
VENV: Final = ROOT / ".e2e" / "worker-venv"
_INSTALL = re.compile(r'pip install [^\n]*?"\.\[([a-z,-]+)\]"')
_COPY = re.compile(r"^COPY\s+(.+?)\s+\S+$", re.MULTILINE)
_TORCH = re.compile(r"pip install [^\n]*?(torch==[0-9.]+)")


def dockerfile_extras(text: str) -> list[str]:
    """The extras the image installs (`pip install ... ".[worker]"`)."""
    match = _INSTALL.search(text)
    if match is None:
        raise AssertionError(f'{DOCKERFILE}: no `pip install ".[extra]"` line to install as the image does')
    return match.group(1).split(",")


def dockerfile_sources(text: str) -> list[str]:
    """The files and folders the image COPYs from the build context."""
    return [part for line in _COPY.findall(text) for part in line.split()]


def clean_env(venv: Path, **extra: str) -> dict[str, str]:
    """What a container's process sees: the venv first on PATH, nothing of the test's Python."""
    env = {
        "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    for key in ("PIP_CONFIG_FILE", "PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "SSL_CERT_FILE"):
        if key in os.environ:
            env[key] = os.environ[key]
    env.update(extra)
    return env


def _run(argv: list[str], cwd: Path, venv: Path) -> None:
    done = subprocess.run(argv, cwd=cwd, env=clean_env(venv), capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{tail}")


def worker_venv() -> Path:
    """The venv, with the current tree installed as the image installs it; its `bin/` plays the image."""
    text = DOCKERFILE.read_text()
    extras = dockerfile_extras(text)
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + text.encode()).hexdigest()
    stamp = VENV / ".dockerfile-key"
    python = VENV / "bin" / "python"
    work = Path(tempfile.mkdtemp(prefix="slimserve-worker-build-"))
    try:
        staging = work / "src"
        staging.mkdir()
        for source in dockerfile_sources(text):
            path = ROOT / source
            if path.is_dir():
                shutil.copytree(path, staging / source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(path, staging / source)
        fresh = not (python.exists() and stamp.exists() and stamp.read_text() == key)
        if fresh:
            shutil.rmtree(VENV, ignore_errors=True)
            VENV.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
            torch = _TORCH.search(text)
            if torch:  # the image's first layer (its index is the machine's pip configuration here)
                _run([str(python), "-m", "pip", "install", "-q", torch.group(1)], work, VENV)
            _run([str(python), "-m", "pip", "install", "-q", f"{staging}[{','.join(extras)}]"], work, VENV)
            stamp.write_text(key)
        else:  # the dependencies are the image's already; slimserve itself is the current tree's (built
            # with the venv's own setuptools: an isolated build env costs minutes on a busy machine)
            _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", "--no-build-isolation",
                  str(staging)], work, VENV)  # fmt: skip
        # The image's own smoke test, from another folder.
        _run([str(VENV / "bin" / "slimserve"), "--help"], work, VENV)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return VENV


if __name__ == "__main__":
    print(worker_venv())
