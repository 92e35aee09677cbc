"""Warm part hosts: a population's actors, kept after it ends cleanly, with the placement-group bundles they sit in,
for the next population this process asks for. A notebook's second run, a test module's runs and a sweep's trials
(Tune reuses a trial's process, and with it its placement group) build their parts in processes that are already up,
with torch and okd_ray imported: a part then starts in the time its build takes.

Nothing of one run reaches the next. A host goes back to the pool only after a clean end (no call of the run was
interrupted, and the transport leaves its actors usable); it drops its part and the process group as it does; it
restores the RNG state of a new process before every build; and it serves only runs whose plugins include every
plugin it has imported. What stays idle for ``ray.keep_hosts_s`` seconds is given back to the cluster.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup

from okd_ray.config import TrainConfig

from ..resources import PartResources, part_bundles, reserve, trial_resources
from .actor import PartHost


@dataclass
class Host:
    actor: Any  # a PartHost handle
    name: str  # its Ray name (ray.get_actor), as placement.json gives it
    plugins: frozenset[str] = frozenset()  # every plugin it has imported


@dataclass
class Group:
    """A placement group of this process's own: the bundles it was asked for, and whether a population uses it."""

    group: PlacementGroup
    bundles: list[dict[str, float]]
    placement: str
    busy: bool = True
    idle_until: float = 0.0


@dataclass
class Pool:
    groups: dict[str, Group] = field(default_factory=dict)  # this process's own groups, by id
    idle: dict[tuple[str, int], tuple[Host, float]] = field(default_factory=dict)  # (group id, bundle) -> host, until
    session: tuple[str, str] | None = None  # the driver's node and job: handles of another Ray session are dead
    lock: threading.RLock = field(default_factory=threading.RLock)

    def reserve(self, config: TrainConfig) -> PartResources:
        """The population's bundles: a Tune trial's, an idle group of ours whose bundles serve it, or a new group
        (idle groups given back first: what they hold may be what it needs)."""
        with self.lock:
            self._same_session()
            trial = trial_resources(config)
            if trial is not None:  # a trial's group: hosts kept in any other trial's group are gone with it
                self._drop(lambda gid: gid != trial.group.id.hex() and gid not in self.groups)
                return trial
            bundles = part_bundles(config)
            for held in self.groups.values():
                indices = (
                    matched(held.bundles, bundles) if not held.busy and held.placement == config.ray.placement else None
                )
                if indices is not None:
                    held.busy = True
                    return PartResources(held.group, bundles, indices, owned=True, threads=config.threads)
            self._drop(lambda gid: gid in self.groups and not self.groups[gid].busy)
        resources = reserve(config)  # waits for the cluster: outside the lock
        with self.lock:
            self.groups[resources.group.id.hex()] = Group(resources.group, bundles, config.ray.placement)
        return resources

    def host(self, resources: PartResources, part: int, plugins: list[str]) -> Host:
        """The idle host in the part's bundle, if it has imported no plugin but these; else a new one there (an idle
        host that cannot serve gives its bundle up first)."""
        key = (resources.group.id.hex(), resources.bundle(part))
        with self.lock:
            kept, _ = self.idle.pop(key, (None, 0.0))
        if kept is not None and kept.plugins <= set(plugins):
            return kept
        if kept is not None:
            ray.kill(kept.actor)
        options, _ = resources.options(part)
        name = f"okd-host-{uuid.uuid4().hex[:12]}"  # findable: ray.get_actor(name)
        return Host(PartHost.options(name=name, **options).remote(), name)

    def give_back(self, resources: PartResources, hosts: list[Host], keep_s: float) -> None:
        """After a clean end, the released hosts (and our group) wait ``keep_s`` seconds for the next population."""
        if keep_s <= 0:
            return self.discard(resources, hosts)
        until = time.monotonic() + keep_s
        with self.lock:
            gid = resources.group.id.hex()
            for part, host in enumerate(hosts):
                self.idle[(gid, resources.bundle(part))] = (host, until)
            if gid in self.groups:
                self.groups[gid].busy, self.groups[gid].idle_until = False, until
        timer = threading.Timer(keep_s + 0.1, self.expire)
        timer.daemon = True
        timer.start()

    def discard(self, resources: PartResources, hosts: list[Host]) -> None:
        """After a failure (or where hosts are not to be kept): the hosts killed, our group removed."""
        for host in hosts:
            ray.kill(host.actor)
        with self.lock:
            gid = resources.group.id.hex()
            if self.groups.pop(gid, None) is not None:
                self._drop(lambda g: g == gid)
                ray.util.remove_placement_group(resources.group)

    def expire(self) -> None:
        """Give back to the cluster what has stayed idle past its time."""
        now = time.monotonic()
        with self.lock:
            if not ray.is_initialized() or not self._same_session():
                return
            for key, (host, until) in list(self.idle.items()):
                if until <= now:
                    del self.idle[key]
                    ray.kill(host.actor)
            expired = {gid for gid, held in self.groups.items() if not held.busy and held.idle_until <= now}
            self._drop(lambda gid: gid in expired)

    def release(self) -> None:
        """Give back every idle host and group now (before a sweep's trials ask the cluster for room, say)."""
        with self.lock:
            if ray.is_initialized() and self._same_session():
                self._drop(lambda gid: gid not in self.groups or not self.groups[gid].busy)

    def _drop(self, which) -> None:
        """Kill the idle hosts in the groups ``which`` selects (by id); remove those groups that are ours and idle."""
        for (gid, bundle), (host, _) in list(self.idle.items()):
            if which(gid):
                del self.idle[(gid, bundle)]
                ray.kill(host.actor)
        for gid, held in list(self.groups.items()):
            if which(gid) and not held.busy:
                del self.groups[gid]
                ray.util.remove_placement_group(held.group)

    def _same_session(self) -> bool:
        """Whether the pool's handles belong to this Ray session; if not, they are forgotten (they died with it). A
        new local cluster has a new node; a driver that joins a cluster again, a new job (a new cluster's first
        job has the id the last one's had, and so has its driver's worker)."""
        context = ray.get_runtime_context()
        session = (context.get_node_id(), context.get_job_id())
        if session == self.session:
            return True
        self.groups, self.idle, self.session = {}, {}, session
        return False


def matched(held: list[dict[str, float]], wanted: list[dict[str, float]]) -> list[int] | None:
    """For each wanted bundle, a distinct held bundle equal to it (the first free one), or None if some has none."""
    free, indices = list(range(len(held))), []
    for bundle in wanted:
        index = next((i for i in free if held[i] == bundle), None)
        if index is None:
            return None
        free.remove(index)
        indices.append(index)
    return indices


POOL = Pool()  # this process's: hosts are owned by the process that started them
