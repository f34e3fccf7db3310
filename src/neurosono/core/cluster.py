"""Ray, the engine for work beyond one process: a local cluster here, or one given by address."""

from __future__ import annotations

import logging
import os

from neurosono.core.runtime import cpu_cores


class RayMissingError(ValueError):
    """Ray is not installed (it comes with the ``scale`` extras)."""


def start_ray(address: str | None = None, cpus: int | None = None):
    """The ``ray`` module, connected: to the cluster at ``address`` (``auto``: the one this
    machine belongs to; ``ray://HOST:10001``: Ray Client), else to a new local cluster of
    ``cpus`` CPUs (default every core). Quiet: no dashboard, no per-task logs, no Ray Data
    progress bars (the caller draws its own)."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise RayMissingError("--engine ray needs Ray: pip install 'neurosono[scale]' (ray[data])") from None
    if not ray.is_initialized():
        # Workers of a local cluster inherit this: keeps Ray's usage report off a closed network.
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        options = {"address": address} if address else {"num_cpus": cpus or cpu_cores()}
        ray.init(
            **options,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR,
        )
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # e.g. "progress bars disabled"
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.execution_options.preserve_order = True  # results in the order of the input
    context.print_on_execution_start = False
    return ray


def cluster_cpus(ray) -> int:
    """How many CPUs the connected cluster has."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))
