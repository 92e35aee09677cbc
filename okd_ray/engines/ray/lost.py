"""The driver's watch on its cluster's head. When the GCS is gone (``ray stop``, a head node that crashed), Ray
waits 60 s for it and then ends the process with one C++ log line. This ends the run within seconds instead,
saying what it kept and how to continue: every instant of a run folder is one a resume continues (``run.py``),
so ending at once loses only the epoch in progress, as Ray's own end would."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

import ray

from ..resources import tcp_error

PROBE_EVERY_S = 1.0


class ClusterWatch:
    """Ends this process (exit code 2) once the GCS has refused connections for ``lost_after_s`` seconds, printing
    ``lost(address, seconds)``. Only a refusal counts: a head that answers nothing (a network that drops packets)
    may come back, and Ray's own wait decides then."""

    def __init__(self, lost_after_s: float, lost: Callable[[str, float], str]):
        self.lost_after_s, self.lost = lost_after_s, lost
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="okd-ray cluster watch", daemon=True)

    def __enter__(self) -> ClusterWatch:
        self.thread.start()
        return self

    def __exit__(self, *_) -> None:
        self.stopped.set()
        self.thread.join()

    def _watch(self) -> None:
        refused_since: float | None = None
        while not self.stopped.wait(PROBE_EVERY_S):
            address = gcs_address()
            if address is None or not refuses(address):
                refused_since = None
                continue
            refused_since = refused_since or time.monotonic()
            gone_s = time.monotonic() - refused_since
            if gone_s >= self.lost_after_s and not self.stopped.is_set():
                print(f"\nerror: {self.lost(address, gone_s)}", file=sys.stderr, flush=True)
                os._exit(2)


def gcs_address() -> str | None:
    """The GCS (``host:port``) of the cluster this process is connected to, or None."""
    if not ray.is_initialized():
        return None
    try:
        return ray.get_runtime_context().gcs_address
    except Exception:  # noqa: BLE001 - disconnected meanwhile
        return None


def refuses(address: str) -> bool:
    """Whether ``address`` refuses a TCP connection: its host is up and nothing listens there any more (no answer
    in time, or no route, is not known to be gone)."""
    host, port = address.rsplit(":", 1)
    return isinstance(tcp_error(host, int(port), PROBE_EVERY_S), ConnectionRefusedError)
