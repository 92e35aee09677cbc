"""A run's folder, local or remote: pyarrow.fs makes ``runs/x`` and ``s3://bucket/runs/x`` the same."""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import signal
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from okd_ray.errors import NOT_WRITABLE, ConfigError, FileDamaged, FolderNotWritable


class RunStore:
    """The folder is made by the first write: a run that fails to start leaves nothing behind."""

    def __init__(self, uri: str):
        if "://" in uri:
            try:
                self.fs, self.root = pafs.FileSystem.from_uri(uri)
            except (OSError, pa.ArrowException) as e:  # no such scheme, no network, no credentials
                raise ConfigError(
                    f"cannot open {uri}: {str(e).splitlines()[0]}; check the URI, your credentials "
                    "and the network, or give a local folder"
                ) from None
        else:
            self.fs, self.root = pafs.LocalFileSystem(), str(Path(uri).resolve())
        self.uri = uri

    @property
    def address(self) -> str:
        """Where any process (an actor, a Tune trial in another folder) finds this store: a URI or an absolute path."""
        return self.uri if "://" in self.uri else self.root

    def path(self, name: str = "") -> str:
        return posixpath.join(self.root, name) if name else self.root

    def exists(self, name: str = "") -> bool:
        """Whether ``name`` (a file or folder; by default the store's own folder) is there."""
        return self.fs.get_file_info(self.path(name)).type != pafs.FileType.NotFound

    def names(self) -> list[str]:
        """The names of the files and folders directly in the store's folder."""
        return [info.base_name for info in self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))]

    def delete(self, name: str = "") -> None:
        """Remove the file or folder ``name`` (by default the whole store), if it is there."""
        info = self.fs.get_file_info(self.path(name))
        if info.type == pafs.FileType.NotFound:
            return
        with self.writing(name):
            if info.type == pafs.FileType.Directory:
                self.fs.delete_dir(info.path)
            else:
                self.fs.delete_file(info.path)
        file_event()

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write to a temporary name, then move: a crash mid-write never spoils the last good file."""
        tmp = self.path(name + ".tmp")
        with self.writing(name):
            self.fs.create_dir(posixpath.dirname(self.path(name)), recursive=True)
            with self.fs.open_output_stream(tmp) as out:
                out.write(data)
        file_event()
        with self.writing(name):
            self.fs.move(tmp, self.path(name))
        file_event()

    @contextlib.contextmanager
    def writing(self, name: str) -> Iterator[None]:
        """A folder okd-ray may not write (read-only, another user's) is one message naming it, not a traceback."""
        try:
            yield
        except OSError as e:
            if e.errno not in NOT_WRITABLE:
                raise
            raise FolderNotWritable(self.path(name), self.uri, os.strerror(e.errno)) from None

    def copy_from(self, folder: str, name: str) -> None:
        """The local ``folder``, copied to ``name`` in the store."""
        pafs.copy_files(folder, self.path(name), destination_filesystem=self.fs)

    def copy_to(self, name: str, folder: str) -> None:
        """``name`` in the store, copied to the local ``folder``."""
        pafs.copy_files(self.path(name), folder, source_filesystem=self.fs)

    def read_bytes(self, name: str) -> bytes:
        with self.fs.open_input_stream(self.path(name)) as f:
            return f.read()

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode())

    def read_text(self, name: str) -> str:
        return self.read_bytes(name).decode()

    def write_table(self, name: str, table: pa.Table) -> None:
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        self.write_bytes(name, buffer.getvalue())

    def read_table(self, name: str) -> pa.Table:
        try:
            return pq.read_table(self.path(name), filesystem=self.fs)
        except pa.ArrowInvalid as e:  # truncated, or not Parquet at all
            raise FileDamaged(self.path(name), f"cannot be read ({str(e).splitlines()[0]})") from None


KILL_AFTER = "OKD_RAY_KILL_AFTER_FILE_EVENTS"
_file_events = 0


def file_event() -> None:
    """A file of a run folder was written, moved into place or deleted. For tests only: with
    OKD_RAY_KILL_AFTER_FILE_EVENTS=N, the process SIGKILLs itself after its Nth event, so that a test can stop a
    run at each instant of its folder (tests/test_kill_points.py); unset, it does nothing."""
    global _file_events
    if KILL_AFTER in os.environ:
        _file_events += 1
        if _file_events == int(os.environ[KILL_AFTER]):
            os.kill(os.getpid(), signal.SIGKILL)
