"""The okd-ray command in processes of their own, forked from one server that has imported okd-ray, torch and Ray
once (multiprocessing's forkserver). Each is a real process: its own pid, signal handlers, exit code, stdout and
stderr, and any Ray cluster it starts, it stops at its exit. What it saves is the 3 to 4 s of imports that every
``python -m okd_ray.cli`` pays here (the CUDA build of torch loads its libraries even without a GPU). The server
forks before anything computes or starts a thread, as ``os.fork`` needs."""

from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

PRELOAD = [
    "okd_ray.cli",
    "okd_ray.run",
    "okd_ray.tune.sweep",
    "okd_ray.engines.ray.engine",
    "okd_ray.trained.load",
    "okd_ray.trained.export",
    "okd_ray.report",
    "sklearn.datasets",
]
_context = None


def context():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def run_command(argv: list[str], cwd: str, env: dict[str, str], out: str, err: str) -> None:
    """In the forked process: ``okd-ray ARGV`` in ``cwd`` with ``env``, its output into the files ``out`` and
    ``err``, ending as the command's own interpreter would: its atexit handlers run (a Ray it started stops)."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(opened, fd)
        os.close(opened)
    sys.argv = ["okd-ray", *argv]
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from okd_ray.cli import main

    try:
        code = main(argv)
    except SystemExit as e:  # argparse's errors and --help
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - what would reach the interpreter: its traceback, exit code 1
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class Output:
    """A forked command's stdout or stderr, read as it grows: ``readline`` waits for a whole line (or the end)."""

    def __init__(self, path: Path, process: Forked):
        self.path, self.process, self.read = path, process, 0

    def readline(self, timeout: float = 300) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.path.read_text()[self.read :]
            line = text[: text.index("\n") + 1] if "\n" in text else ""
            if line or (self.process.poll() is not None and not text) or time.monotonic() > deadline:
                self.read += len(line)
                return line
            time.sleep(0.02)

    def rest(self) -> str:
        text = self.path.read_text()[self.read :]
        self.read += len(text)
        return text


class Forked:
    """As much of ``subprocess.Popen`` as the tests use, for a command forked by the server."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]):
        folder = Path(tempfile.mkdtemp(prefix="okd-ray-command-"))
        self.args = ["okd-ray", *argv]
        self.process = context().Process(
            target=run_command, args=(argv, str(cwd), env, str(folder / "out"), str(folder / "err"))
        )
        self.process.start()
        self.pid = self.process.pid
        (folder / "out").touch(), (folder / "err").touch()
        self.stdout, self.stderr = Output(folder / "out", self), Output(folder / "err", self)

    def poll(self) -> int | None:
        return self.process.exitcode

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return self.stdout.rest(), self.stderr.rest()
