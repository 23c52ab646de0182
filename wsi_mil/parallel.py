"""Run one task per slide on Dask: a local cluster by default, an existing scheduler if given.

Tasks never raise for bad input: they return a :class:`~wsi_mil.runrecord.SlideStatus`. A worker
that dies (a segfault in a slide library, the OOM killer) is caught here per slide and recorded
as a failure, and the rest of the batch carries on.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from wsi_mil.errors import ConfigError, WsiMilError
from wsi_mil.runrecord import FAILED, SlideStatus

#: the Dask worker resource a GPU worker advertises (``dask worker --resources GPU=1``)
GPU_RESOURCE = "GPU"


def default_workers() -> int:
    """Worker processes for a local cluster: one per available core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def dask_client(
    scheduler: str | None = None,
    workers: int | None = None,
    threads_per_worker: int = 1,
    memory_limit: str | float | None = "auto",
) -> Iterator[Any]:
    """A ``distributed.Client``: connected to ``scheduler`` or to a new local cluster.

    A local cluster uses processes (one slide library crash cannot take the batch down),
    ``workers`` of them (default: one per core), no dashboard.
    """
    from distributed import Client, LocalCluster

    if workers is not None and workers < 0:  # a local cluster of -1 workers waits for ever
        raise ConfigError(f"workers={workers}: give 0 (no Dask, all in this process) or a positive number of "
                          "worker processes")
    if scheduler:
        try:
            client = Client(scheduler)  # connect timeout: dask config distributed.comm.timeouts.connect
        except OSError as exc:
            raise WsiMilError(
                f"cannot reach the Dask scheduler at {scheduler}: {exc}; check the address "
                "(tcp://HOST:PORT) and that the scheduler is running"
            ) from exc
        try:
            yield client
        finally:
            client.close()
        return
    n = workers or default_workers()
    with LocalCluster(
        n_workers=n,
        threads_per_worker=threads_per_worker,
        processes=True,
        dashboard_address=":0",
        memory_limit=memory_limit,
        silence_logs=40,
    ) as cluster, Client(cluster) as client:
        yield client


def worker_resources(client: Any) -> dict[str, dict[str, float]]:
    """The resources each worker of ``client``'s scheduler advertises: ``{address: {name: amount}}``."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    return {addr: dict(info.get("resources") or {}) for addr, info in workers.items()}


def device_resources(client: Any, device: str) -> dict[str, float] | None:
    """What a task on ``device`` asks of a worker: ``{"GPU": 1}`` or ``None`` (any worker).

    ``device`` is a stage's device setting: ``cpu`` runs on any worker (its CPU); ``cuda`` or
    ``cuda:N`` needs a worker with the ``GPU`` resource and fails fast when none has it; ``auto``
    asks for a GPU worker when the cluster has one, else runs on any worker.
    """
    text = device.strip().lower()
    if text == "cpu":
        return None
    if any(res.get(GPU_RESOURCE, 0) > 0 for res in worker_resources(client).values()):
        return {GPU_RESOURCE: 1}
    if text == "auto":
        return None
    raise WsiMilError(
        f"device '{device}': no worker of the Dask scheduler {client.scheduler.address} has the resource "
        f"{GPU_RESOURCE}; start GPU workers with 'dask worker ... --resources {GPU_RESOURCE}=1' or set device: cpu"
    )


def run_slide_tasks(
    client: Any,
    task: Callable[..., SlideStatus],
    items: Sequence[tuple[str, str, tuple]],
    on_done: Callable[[SlideStatus], None],
    description: str = "slides",
    show_progress: bool = True,
    resources: dict[str, float] | None = None,
) -> list[SlideStatus]:
    """Submit ``task(*args)`` for each ``(slide_id, source, args)``; call ``on_done`` as each ends.

    ``resources``: what each task asks of a worker (e.g. ``{"GPU": 1}``; see
    :func:`device_resources`). Returns the statuses in completion order. A task that raises (or
    whose worker died more often than ``distributed.scheduler.allowed-failures``) becomes a
    ``failed`` status with a one-line reason; a task whose worker was lost fewer times is run
    again elsewhere by Dask.
    """
    from distributed import as_completed

    futures = {}
    for slide_id, source, args in items:
        fut = client.submit(task, *args, key=f"wsi_mil-{description}-{slide_id}-{time.time_ns()}",
                            pure=False, resources=resources)
        futures[fut] = (slide_id, source)
    results: list[SlideStatus] = []
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[last]}"), TimeElapsedColumn(), disable=not show_progress,
        transient=False,
    )
    with progress:
        bar = progress.add_task(description, total=len(futures), last="")
        for fut in as_completed(list(futures)):
            slide_id, source = futures[fut]
            try:
                status = fut.result()
            except Exception as exc:  # worker died or task raised unexpectedly
                reason = " ".join(f"{type(exc).__name__}: {exc}".split())
                status = SlideStatus(slide_id, source, FAILED, reason=f"{source}: {reason}")
            on_done(status)
            results.append(status)
            progress.update(bar, advance=1, last=f"{slide_id}: {status.status}")
            fut.release()
    return results


def map_slides(
    task: Callable[..., SlideStatus],
    items: Sequence[tuple[str, str, tuple]],
    on_done: Callable[[SlideStatus], None],
    description: str,
    scheduler: str | None = None,
    workers: int | None = None,
    show_progress: bool = True,
    resources: dict[str, float] | None = None,
) -> list[SlideStatus]:
    """Run ``task(*args)`` per slide: in this process when ``workers == 0`` and no scheduler
    (debugging, no Dask), else one Dask task per slide (local cluster or ``scheduler``), each
    asking for ``resources`` (Dask worker resources, e.g. ``{"GPU": 1}``; local clusters have none).

    Returns the statuses sorted by slide id; ``on_done`` sees each as it ends.
    """
    if workers == 0 and not scheduler:
        statuses = []
        for _, _, args in items:
            status = task(*args)
            on_done(status)
            statuses.append(status)
    else:
        with dask_client(scheduler, workers) as client:
            statuses = run_slide_tasks(client, task, items, on_done, description, show_progress,
                                       resources if scheduler else None)
    return sorted(statuses, key=lambda s: s.slide_id)
