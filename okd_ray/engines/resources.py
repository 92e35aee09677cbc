"""Where the population's actors run: joining or starting a cluster, and reserving their resources.

All parts are reserved at once in a placement group, so a population never starts half-placed; a request
the cluster can never meet is an error that says what was asked and what the cluster has.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass

import ray
from ray.util.placement_group import PlacementGroup, get_current_placement_group, placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from okd_ray.config import TrainConfig
from okd_ray.errors import ClusterUnreachable, ConfigError
from okd_ray.population import parts_of
from okd_ray.population.protocol import replicas_of

CONNECT_TIMEOUT_S = 5.0  # to reach a given address; Ray's own retries would take minutes to give up
PRELOAD = "RAY_preload_python_modules"  # read by a raylet as it starts: what its workers import once registered
AUTH_MODE = "RAY_AUTH_MODE"  # token: this process sends the cluster's token (Ray's token authentication)


def connect(address: str | None, log_to_driver: bool = True) -> None:
    """Join ``address`` (``auto``, ``host:6379``, ``ray://host:10001``; none given: the one ``RAY_ADDRESS`` names, as
    in a Ray job), or start a local cluster whose workers preload torch (unless ``RAY_preload_python_modules`` says
    otherwise); reuse a live connection. Without an address okd-ray never joins a cluster that ``ray start`` left on
    this machine, as ``ray.init()`` would: that is ``--address auto``. The caller's SIGTERM handler stays
    (``ray.init`` would make SIGTERM a plain exit)."""
    if ray.is_initialized():
        return
    address = address if address is not None else os.environ.get("RAY_ADDRESS", "local")
    if address not in ("auto", "local"):
        check_reachable(address)
    os.environ.setdefault(PRELOAD, "torch")  # a cluster joined keeps its own setting: its raylets have started
    on_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=log_to_driver, configure_logging=False)
    except ConnectionError as e:  # "auto" with no cluster to find
        raise ClusterUnreachable(address, str(e).splitlines()[0]) from None
    finally:
        if on_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_sigterm)


def tcp_error(host: str, port: int, timeout: float) -> OSError | None:
    """Why no TCP connection to ``host:port`` was made within ``timeout`` seconds; None where one was."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        return e
    return None


def check_reachable(address: str) -> None:
    """Raise ClusterUnreachable unless something answers at ``address``'s host and port within a few seconds; and
    an error saying what to set when the cluster refuses this process's token. Ray itself would retry for 20 s,
    printing a line a second, and then call the cluster unreachable."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # not host:port: Ray's own error says what is wrong with it
    error = tcp_error(host, int(port), CONNECT_TIMEOUT_S)
    if error is not None:
        raise ClusterUnreachable(address, error.strerror or f"no answer within {CONNECT_TIMEOUT_S:g} s")
    if address.startswith("ray://"):
        return  # a Ray Client server: no GCS to ask
    import grpc
    from ray._private.authentication.authentication_utils import is_token_auth_enabled
    from ray._private.grpc_utils import init_grpc_channel
    from ray.core.generated.gcs_service_pb2 import GetClusterIdRequest
    from ray.core.generated.gcs_service_pb2_grpc import NodeInfoGcsServiceStub

    channel = init_grpc_channel(address)  # with this process's token where ray.init would send one
    try:
        NodeInfoGcsServiceStub(channel).GetClusterId(GetClusterIdRequest(), timeout=CONNECT_TIMEOUT_S)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.UNAUTHENTICATED:
            return  # whatever else it is, Ray's own connection says it
        sent = (
            "the token it sends was refused"
            if is_token_auth_enabled()
            else f"this process sends none: {AUTH_MODE} is {os.environ.get(AUTH_MODE, 'unset')}"
        )
        raise ConfigError(
            f"the Ray cluster at {address} requires its authentication token (it runs with {AUTH_MODE}=token) and "
            f"{sent}. Set {AUTH_MODE}=token and give the cluster's token: in ~/.ray/auth_token, RAY_AUTH_TOKEN or "
            "RAY_AUTH_TOKEN_PATH (`ray get-auth-token` on its head node prints it)"
        ) from None
    finally:
        channel.close()


def part_bundles(config: TrainConfig, spare_cpus: float = 0.0) -> list[dict[str, float]]:
    """One resource bundle per part and replica, part by part in ``parts_of`` order (a part's replicas next to
    each other): members, the fusion (FFL), the trunk (which gets a member's share). ``spare_cpus`` stay out of
    the automatic shares (a Tune trial's own bundle)."""
    r = config.ray
    parts = [p for p, count in zip(parts_of(config), replicas_of(config)) for _ in range(count)]
    totals = _totals()
    cpus = r.num_cpus_per_member
    if cpus is None:  # auto: a whole CPU each where there are enough, else an equal share
        cpus = _share(totals.get("CPU", 1) - spare_cpus, len(parts))
    gpus = r.num_gpus_per_member
    if gpus is None:  # auto: a GPU per member where there are enough, else an equal share; none without GPUs
        gpus = _share(totals.get("GPU", 0), sum(p.kind != "fused" for p in parts))
    member = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    fusion = {
        "CPU": r.num_cpus_fusion if r.num_cpus_fusion is not None else cpus,
        **({"GPU": r.num_gpus_fusion} if r.num_gpus_fusion else {}),
    }
    return [dict(fusion if p.kind == "fused" else member) for p in parts]


def _share(total: float, parts: int) -> float:
    return min(1.0, math.floor(100 * total / parts) / 100)


@dataclass
class PartResources:
    group: PlacementGroup
    bundles: list[dict[str, float]]  # each part's, in parts_of order (a part's replicas next to each other)
    indices: list[int]  # each part's bundle in ``group`` (inside a Tune trial from 1: bundle 0 is the trainable's)
    owned: bool  # the group is this process's own (not a Tune trial's)
    threads: int | None = None  # the config's ``threads``; None: the part's whole CPUs

    def options(self, part: int) -> tuple[dict, int]:
        """Actor options for part ``part`` (in ``parts_of`` order) and its torch thread count."""
        bundle = self.bundles[part]
        opts = {
            "num_cpus": bundle["CPU"],
            "num_gpus": bundle.get("GPU", 0),
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                self.group, placement_group_bundle_index=self.bundle(part)
            ),
        }
        return opts, self.threads or max(1, math.floor(bundle["CPU"]))

    def bundle(self, part: int) -> int:
        return self.indices[part]


def trial_resources(config: TrainConfig) -> PartResources | None:
    """Inside a Tune trial whose placement group holds the population (bundles 1 to K), those bundles."""
    bundles = part_bundles(config)
    current = get_current_placement_group()
    if current is None or len(current.bundle_specs) < len(bundles) + 1:
        return None
    return PartResources(current, bundles, list(range(1, len(bundles) + 1)), owned=False, threads=config.threads)


def reserve(config: TrainConfig) -> PartResources:
    """Reserve the population's bundles in a new placement group of this process's own."""
    bundles = part_bundles(config)
    if config.ray.address is None:  # a cluster we started has no autoscaler: what it lacks now, it always will
        check_feasible(bundles)
    group = placement_group(bundles, strategy=config.ray.placement.upper())
    deadline = time.monotonic() + config.ray.placement_timeout_s
    while not _ready(group, timeout=1.0):
        if time.monotonic() > deadline:
            ray.util.remove_placement_group(group)
            raise ConfigError(
                f"the cluster could not place the population's parts {bundles} within "
                f"ray.placement_timeout_s={config.ray.placement_timeout_s} s (it has {_totals()}, "
                f"{_available()} free); free resources, add nodes, or lower ray.num_cpus_per_member / "
                "ray.num_gpus_per_member"
            )
    return PartResources(group, bundles, list(range(len(bundles))), owned=True, threads=config.threads)


def check_feasible(bundles: list[dict[str, float]]) -> None:
    """Refuse at once what the cluster's nodes together could never hold."""
    totals = _totals()
    for key in ("CPU", "GPU"):
        need = sum(b.get(key, 0) for b in bundles)
        if need > totals.get(key, 0) + 1e-9:
            share = _share(totals.get(key, 0), len(bundles))
            option = "ray.num_gpus_per_member" if key == "GPU" else "ray.num_cpus_per_member"
            fix = f"{option}={share:g}" if share > 0 else f"{option}=0"
            raise ConfigError(
                f"the population needs {need:g} {key} ({len(bundles)} parts: {bundles}) but the cluster has "
                f"{totals.get(key, 0):g}; set {fix}, or join a bigger cluster with --address"
            )


def _ready(group: PlacementGroup, timeout: float) -> bool:
    ready, _ = ray.wait([group.ready()], timeout=timeout)
    return bool(ready)


def _totals() -> dict:
    return {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}


def _available() -> dict:
    return {k: v for k, v in ray.available_resources().items() if k in ("CPU", "GPU")}
