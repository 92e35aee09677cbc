"""Errors a user can act on: each message says what was wrong and how to fix it."""

import difflib
import errno
import signal
from collections.abc import Iterable


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``"did you mean a, b? "`` for the closest of ``choices``, or ``""``: a prefix for error messages."""
    close = difflib.get_close_matches(name, list(choices), n=3)
    return f"did you mean {', '.join(close)}? " if close else ""


class OkdRayError(Exception):
    """Base class: the CLI prints these without a traceback."""


class ConfigError(OkdRayError, ValueError):
    """A config key or value is wrong; the message names the key and the fix."""


class DataError(OkdRayError, ValueError):
    """A data set is unknown or its files are missing; the message says where we looked."""


class ModelError(OkdRayError, ValueError):
    """A model name is unknown or a model does not fit the population."""


class TrainingDiverged(OkdRayError, RuntimeError):
    """A value (a loss term) of a part became NaN or infinite at an epoch and step (both from 1); lowering one of
    ``keys`` (config keys) is the fix; ``kept`` says where the last good checkpoint is, once the run knows."""

    def __init__(
        self, part: str, value_name: str, value: float, epoch: int, step: int, keys: tuple[str, ...], kept: str = ""
    ):
        super().__init__(part, value_name, value, epoch, step, tuple(keys), kept)
        self.part, self.value_name, self.value, self.epoch, self.step = part, value_name, value, epoch, step
        self.keys, self.kept = tuple(keys), kept

    def __str__(self) -> str:
        return (
            f"{self.part}: {self.value_name!r} is {self.value} at epoch {self.epoch}, step {self.step}; "
            f"lower {' or '.join(self.keys)}" + (f"; {self.kept}" if self.kept else "")
        )

    def keeping(self, kept: str) -> "TrainingDiverged":
        """This error, saying where the last good checkpoint is."""
        return TrainingDiverged(*self.args[:-1], kept)


class CompileFailed(OkdRayError):
    """torch.compile could not compile a part's module (``compile``); the message names the part and the fix."""


class TermFailed(OkdRayError):
    """A term of the method (a plugin's, most often) raised, or returned what is not a loss, in a part's step at an
    epoch and step (both from 1); ``where`` is the term's own line that raised, or its file."""

    def __init__(self, part: str, term: str, epoch: int, step: int, problem: str, where: str):
        super().__init__(part, term, epoch, step, problem, where)
        self.part, self.term, self.epoch, self.step, self.problem, self.where = part, term, epoch, step, problem, where

    def __str__(self) -> str:
        return (
            f"{self.part}: the loss of term {self.term!r} {self.problem} at epoch {self.epoch}, step {self.step}; "
            f"fix it in {self.where}"
        )


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler's stop), raised where Ctrl-C raises KeyboardInterrupt, so that both stop
    the work the same way, keeping what it finished; only the exit code differs. ``received`` stays set once one
    came: raised inside ``ray.get``, it comes back out of Ray as a plain KeyboardInterrupt."""

    received = False

    @classmethod
    def raised(cls) -> "Terminated":
        cls.received = True
        return cls()


class Interrupted(OkdRayError):
    """The user stopped the work (Ctrl-C or SIGTERM); the message says what was kept and the command that
    continues it. The exit code is the shell's for that signal: 130 or 143."""

    def __init__(self, message: str, signal_number: int = signal.SIGINT):
        super().__init__(message, signal_number)
        self.message, self.signal_number = message, signal_number

    def __str__(self) -> str:
        return self.message

    @property
    def exit_code(self) -> int:
        return 128 + self.signal_number


def signal_of(interrupt: KeyboardInterrupt) -> int:
    """The signal behind ``interrupt``: SIGTERM for a Terminated or once one was raised, else SIGINT (Ctrl-C)."""
    return signal.SIGTERM if isinstance(interrupt, Terminated) or Terminated.received else signal.SIGINT


class NoResult(OkdRayError):
    """The work ran but nothing of it can be used (no trial of a sweep finished); exit code 1, not 2."""


class FileDamaged(OkdRayError):
    """A file of a run folder is missing, cannot be read, or differs from what the manifest recorded of it."""

    what = "file"

    def __init__(self, path: str, problem: str, fix: str = ""):
        super().__init__(path, problem, fix)  # the fields are the args: a pickled copy (from an actor) is equal
        self.path, self.problem, self.fix = path, problem, fix

    def __str__(self) -> str:
        return f"{self.what} {self.path} {self.problem}{self.fix}"


class CheckpointDamaged(FileDamaged):
    """A checkpoint file (a shard, the manifest) is damaged: a resume falls back to the checkpoint before."""

    what = "checkpoint file"


class FolderNotWritable(OkdRayError):
    """okd-ray may not write in a folder it works in (read-only, another user's): ``NOT_WRITABLE`` errors."""

    def __init__(self, path: str, folder: str, reason: str):
        super().__init__(path, folder, reason)
        self.path, self.folder, self.reason = path, folder, reason

    def __str__(self) -> str:
        return (
            f"cannot write {self.path} ({self.reason}): make {self.folder} writable, or copy it to a folder you "
            "may write and give the copy"
        )


NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)  # an OSError's errno where a folder may not be written


class FolderLocked(OkdRayError):
    """Another okd-ray process works in the folder: two writers would overwrite each other's checkpoints."""

    def __init__(self, folder: str, pid: int | None, host: str | None, since: str | None, fix: str = ""):
        super().__init__(folder, pid, host, since, fix)
        self.folder, self.pid, self.host, self.since = folder, pid, host, since
        self.fix = fix or f"wait for it to end, or stop it (kill -INT {pid} on {host})"

    def __str__(self) -> str:
        return (
            f"{self.folder} is in use by okd-ray pid {self.pid} on host {self.host} (since {self.since}): one "
            f"process writes a folder at a time; {self.fix}"
        )


class ClusterUnreachable(OkdRayError):
    """The Ray cluster at the given address does not answer."""

    def __init__(self, address: str, reason: str):
        super().__init__(address, reason)
        self.address, self.reason = address, reason

    def __str__(self) -> str:
        return (
            f"cannot reach a Ray cluster at {self.address} ({self.reason}); check --address (ray.address) and "
            "that the cluster runs: `ray status` on its head node lists its nodes"
        )


class PopulationLost(OkdRayError, RuntimeError):
    """An actor of the population died; the run restarts from its last checkpoint (ray.max_restarts)."""


class MissingExtra(OkdRayError):
    """An optional dependency is not installed; the message names the extra that brings it."""

    def __init__(self, what: str, package: str, extra: str):
        super().__init__(what, package, extra)
        self.what, self.package, self.extra = what, package, extra

    def __str__(self) -> str:
        return f"{self.what} needs {self.package}, which is not installed: pip install 'okd-ray[{self.extra}]'"


class ExportFailed(OkdRayError):
    """A model cannot be exported to a format; ``reason`` is what the exporter said."""

    def __init__(self, part: str, format: str, reason: str, fix: str = ""):
        super().__init__(part, format, reason, fix)
        self.part, self.format, self.reason, self.fix = part, format, reason, fix

    def __str__(self) -> str:
        fix = f"; {self.fix}" if self.fix else ""
        return f"part {self.part} cannot be exported to {self.format}: {self.reason}{fix}"
