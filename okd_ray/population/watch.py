"""A part's call that runs longer than ``silent_part_s`` is reported by name, where the part runs (the local
engine's process, or the part's Ray host, whose stderr Ray shows in the driver's): a plugin loss that never
returns, a data set read that hangs. Every engine and transport calls a part's methods through ``Watched``, which
also names the part where torch.compile fails in its call (compiling happens on a module's first calls)."""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from okd_ray.execution import compile_error, compile_failed


@dataclass
class Call:
    part: str
    method: str
    since: float
    reported: bool = False


class Watch:
    """This process's calls in progress and the thread that reports those that run too long: one per process."""

    def __init__(self):
        self.calls: dict[int, Call] = {}  # by the calling thread
        self.limit = 0.0
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def start(self, limit: float) -> None:
        with self.lock:
            self.limit = limit
            if self.thread is None and limit > 0:
                self.thread = threading.Thread(target=self._report, name="okd-ray silent parts", daemon=True)
                self.thread.start()

    def run(self, part: str, method: str, fn, *args, **kwargs) -> Any:
        me = threading.get_ident()
        outer = self.calls.get(me)  # a call made inside another part's: that one is watched again after
        self.calls[me] = Call(part, method, time.monotonic())
        try:
            return fn(*args, **kwargs)
        finally:
            if outer is None:
                del self.calls[me]
            else:
                self.calls[me] = outer

    def _report(self) -> None:
        while True:
            time.sleep(min(1.0, self.limit / 4) if self.limit > 0 else 1.0)
            now = time.monotonic()
            for call in list(self.calls.values()):
                if self.limit > 0 and not call.reported and now - call.since > self.limit:
                    call.reported = True
                    print(
                        f"okd-ray: {call.part} has run {call.method}() for {now - call.since:.0f} s without "
                        f"returning (silent_part_s={self.limit:g}); the run goes on waiting for it. To see where "
                        f"it is: py-spy dump --pid {os.getpid()}",
                        file=sys.stderr,
                        flush=True,
                    )


WATCH = Watch()


class Watched:
    """A part whose method calls ``WATCH`` times; everything else is the part's own. A method keeps its function
    (``__func__``), whose annotations say what it returns (``protocol.outputs``); it is wrapped once, on first use
    (then found on this object, a step's calls no longer come here)."""

    def __init__(self, part, limit: float):
        WATCH.start(limit)
        spec = part.spec
        self._part, self._name = part, spec.pid.name + (f" (replica {spec.replica})" if spec.replicas > 1 else "")

    def __getattr__(self, attribute: str) -> Any:
        value = getattr(self._part, attribute)
        if not callable(value) or not hasattr(value, "__func__"):
            return value

        @functools.wraps(value)
        def watched(*args, **kwargs):
            try:
                return WATCH.run(self._name, attribute, value, *args, **kwargs)
            except Exception as e:  # noqa: BLE001 - only torch.compile's are replaced
                if compile_error(e):
                    raise compile_failed(self._name, e) from None
                raise

        watched.__func__ = value.__func__  # type: ignore[attr-defined]
        setattr(self, attribute, watched)
        return watched
