"""One writer per folder: a run or sweep folder that a live okd-ray process works in is locked.

The lock is a file in the folder that names its holder (pid, host, start) under an ``flock``, which the kernel
drops when the holder dies however it dies: a lock whose ``flock`` is free was left by a dead process and is
taken over, with a message. A lock file written on another host is not taken over (whether that process still
runs cannot be seen from here, nor can every shared file system be trusted with ``flock``). Local folders only:
a URI (``s3://``) has no atomic create-if-absent in ``pyarrow.fs``, so it is not locked (see README).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

from okd_ray.errors import NOT_WRITABLE, ConfigError, FolderLocked, FolderNotWritable
from okd_ray.storage import RunStore

LOCK = ".okd-ray.lock"


@contextlib.contextmanager
def folder_lock(store: RunStore, on_takeover: Callable[[str], None]) -> Iterator[None]:
    """Hold ``store``'s folder for this process. The folder is made now (an error names it if it cannot be)
    and removed again if it is left empty, so work that fails to start leaves no folder behind."""
    if "://" in store.uri:
        yield
        return
    folder = Path(store.root)
    made = next((p for p in [*reversed(folder.parents), folder] if not p.exists()), None)  # the first we make
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"cannot create the folder {folder} ({e.strerror}); give a folder you may write: "
            "output_dir=... or --run-dir for okd-ray train, --storage-path for okd-ray tune"
        ) from None
    fd = acquire(folder / LOCK, on_takeover)
    try:
        yield
    finally:
        (folder / LOCK).unlink(missing_ok=True)
        os.close(fd)  # drops the flock
        if made is not None:
            remove_empty(folder, made)


def acquire(path: Path, on_takeover: Callable[[str], None]) -> int:
    """The open, flocked lock file ``path``, now naming this process."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:  # a read-only folder: okd-ray writes there, the lock first
            if e.errno not in NOT_WRITABLE:
                raise
            raise FolderNotWritable(str(path), str(path.parent), e.strerror) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held = read_holder(fd)
            os.close(fd)
            raise FolderLocked(str(path.parent), held.get("pid"), held.get("host"), held.get("since")) from None
        if not same_file(fd, path):  # its holder removed it between our open and our flock: try again
            os.close(fd)
            continue
        held = read_holder(fd)
        if held and held.get("host") != socket.gethostname():
            os.close(fd)
            raise FolderLocked(
                str(path.parent),
                held.get("pid"),
                held.get("host"),
                held.get("since"),
                f"okd-ray cannot tell from here whether it still runs; if it does not, delete {path}",
            )
        if held:
            on_takeover(
                f"{path.parent}: took over the lock of okd-ray pid {held.get('pid')} on "
                f"{held.get('host')}, which is no longer running"
            )
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        return fd


def read_holder(fd: int) -> dict:
    """The holder the lock file names, or {} when it names none (new, or not written through)."""
    try:
        held = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}
    return held if isinstance(held, dict) else {}


def same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def remove_empty(folder: Path, top: Path) -> None:
    """Remove ``folder`` and its parents up to ``top`` while they are empty."""
    for path in [folder, *folder.parents]:
        try:
            path.rmdir()
        except OSError:  # not empty: something else lives there
            return
        if path == top:
            return
