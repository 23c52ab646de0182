"""Slurm jobs of Dask workers, CPU and GPU, all on one scheduler (dask-jobqueue).

One ``SLURMCluster`` owns the scheduler; its job template is the CPU jobs'. GPU jobs are further
entries of the same cluster's worker spec with their own options (``--gres``, one worker per
GPU advertising the Dask resource ``GPU=1``), so that tasks asking for ``resources={"GPU": 1}``
(feature extraction) go to GPU workers and every other task to any worker. Also here: the
checks that make a cluster's failures clear (no Slurm, an unknown partition, workers that never
start).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from common import add_worker_specs, show

from wsi_mil.errors import WsiMilError
from wsi_mil.parallel import GPU_RESOURCE, worker_resources

#: the Slurm commands dask-jobqueue and these checks run
SLURM_COMMANDS = ("sbatch", "squeue", "sinfo", "scancel")


class SlurmError(WsiMilError):
    """Slurm is missing, refuses the jobs, or the workers never start."""


def slurm(*args: str, timeout: float = 60) -> str:
    """Run one Slurm command; its stdout, else :class:`SlurmError` with its stderr."""
    try:
        res = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise SlurmError(f"'{' '.join(args)}' did not answer within {timeout:.0f} s; is slurmctld up?") from exc
    if res.returncode != 0:
        raise SlurmError(f"'{' '.join(args)}' failed: {' '.join(res.stderr.split()) or f'exit {res.returncode}'}")
    return res.stdout


def check_slurm_commands() -> None:
    """Fail when a Slurm command is not on PATH."""
    missing = [c for c in SLURM_COMMANDS if shutil.which(c) is None]
    if missing:
        raise SlurmError(f"{', '.join(missing)} not found on PATH: run this on a Slurm login node "
                         "(or 'module load slurm'); --dry-run prints the job scripts without Slurm")


def partitions() -> list[str]:
    """The partitions ``sinfo`` lists (the default one without its ``*``)."""
    return sorted({p.rstrip("*") for p in slurm("sinfo", "-h", "-o", "%P").split()})


def check_partitions(wanted: dict[str, str | None]) -> None:
    """Fail when a partition named by an option (``{"--queue": "cpu"}``) does not exist."""
    known = partitions()
    for option, name in wanted.items():
        if name is not None and name not in known:
            raise SlurmError(f"{option} {name}: no such Slurm partition (sinfo lists {', '.join(known) or 'none'}); "
                             f"pass {option} with one of them")


@dataclass
class JobGroup:
    """``jobs`` Slurm jobs of one kind (``cpu`` or ``gpu``) with the same SLURMJob options."""

    kind: str
    jobs: int
    options: dict[str, Any]
    names: list[str] = field(default_factory=list)  # worker-spec entries, once submitted
    job_ids: list[str] = field(default_factory=list)  # Slurm job ids, once submitted

    @property
    def processes(self) -> int:
        return int(self.options.get("processes") or 1)


def make_cluster(cpu: dict[str, Any], interface: str | None = None, scheduler_host: str | None = None,
                 **common: Any) -> Any:
    """A ``SLURMCluster`` whose scheduler runs here and whose job template is ``cpu``; nothing submitted.

    ``interface``: network interface of the scheduler and the workers (``ib0``; ``lo`` on one
    machine); ``scheduler_host``: the address the scheduler listens on (overrides ``interface``
    for it). ``common``: further SLURMCluster options of every job (account, walltime, python...).
    """
    from dask_jobqueue import SLURMCluster

    scheduler_options: dict[str, Any] = {"dashboard_address": ":0"}
    if scheduler_host:
        scheduler_options["host"] = scheduler_host
    elif interface:
        scheduler_options["interface"] = interface
    return SLURMCluster(interface=interface, scheduler_options=scheduler_options, **cpu, **common)


def group_options(cluster: Any, **overrides: Any) -> dict[str, Any]:
    """The cluster's job options (its template, plus what the cluster added) with ``overrides``."""
    return {**cluster._job_kwargs, **overrides}


def job_script(cluster: Any, options: dict[str, Any]) -> str:
    """The batch script a job with ``options`` would submit to ``cluster``'s scheduler."""
    return cluster.job_cls(cluster.scheduler_address, name="dummy-name", **options).job_script()


def submit(cluster: Any, groups: Sequence[JobGroup]) -> None:
    """Submit every job of ``groups`` (``sbatch``): one worker-spec entry per job, named
    ``{kind}-{i}`` (its workers ``{kind}-{i}-{k}`` when a job holds several)."""
    specs: dict[str, dict[str, Any]] = {}
    for g in groups:
        for i in range(g.jobs):
            name = f"{g.kind}-{i}"
            specs[name] = {"cls": cluster.job_cls, "options": dict(g.options)}
            if g.processes > 1:
                specs[name]["group"] = [f"-{k}" for k in range(g.processes)]
            g.names.append(name)
    try:
        add_worker_specs(cluster, specs)
    except RuntimeError as exc:  # dask-jobqueue: sbatch exited non-zero
        raise SlurmError(f"sbatch refused a job: {' '.join(str(exc).split())[:600]}") from exc
    for g in groups:
        g.job_ids = [str(cluster.workers[n].job_id) for n in g.names if n in cluster.workers]


#: how :func:`queue_states` names a job that has left the queue
ENDED = "ended (no longer in squeue; read its log)"


def queue_states(ids: Sequence[str]) -> dict[str, str]:
    """``squeue``'s view of each job id: ``wsi-mil-cpu PENDING (BeginTime)``, or :data:`ENDED`."""
    if not ids:
        return {}
    out = slurm("squeue", "-h", "-j", ",".join(ids), "-o", "%i|%j|%T|%r")
    seen = {}
    for line in out.splitlines():
        jid, name, state, reason = (line.split("|") + ["", "", ""])[:4]
        seen[jid] = f"{name} {state}" + (f" ({reason})" if reason and reason != "None" else "")
    return {j: seen.get(j, ENDED) for j in ids}


def format_states(states: dict[str, str]) -> str:
    """``job 12 wsi-mil-cpu PENDING (BeginTime), job 13 ...`` (or ``no job submitted``)."""
    return ", ".join(f"job {j} {s}" for j, s in states.items()) or "no job submitted"


def connected(client: Any) -> dict[str, int]:
    """How many workers of each kind are connected: ``{"cpu": n, "gpu": m}`` (GPU: has ``GPU``)."""
    counts = {"cpu": 0, "gpu": 0}
    for res in worker_resources(client).values():
        counts["gpu" if res.get(GPU_RESOURCE, 0) > 0 else "cpu"] += 1
    return counts


def wait_for_workers(client: Any, groups: Sequence[JobGroup], timeout: float, logs: str,
                     poll: float = 1.0) -> dict[str, int]:
    """Wait until every group with jobs has a worker connected; the counts per kind.

    Raises :class:`SlurmError` naming the queue state (``squeue``) of the groups still without a
    worker after ``timeout`` seconds, or as soon as all their jobs have left the queue.
    """
    deadline = time.monotonic() + timeout
    next_queue_check = time.monotonic() + 5
    while True:
        counts = connected(client)
        waiting = [g for g in groups if g.jobs and counts[g.kind] == 0]
        if not waiting:
            return counts
        now = time.monotonic()
        if now > deadline or now > next_queue_check:
            states = {g.kind: queue_states(g.job_ids) for g in waiting}
            all_ended = all(s == ENDED for per_kind in states.values() for s in per_kind.values())
            if now > deadline or all_ended:
                why = f"within {timeout:.0f} s" if now > deadline else "before their jobs ended"
                detail = "; ".join(f"{k} jobs: {format_states(s)}" for k, s in states.items())
                raise SlurmError(f"no Dask worker of the {', '.join(states)} jobs connected {why}; Slurm queue: "
                                 f"{detail}; worker logs in {logs}/")
            next_queue_check = now + 5
        time.sleep(poll)


def run_watched(cmd: list[str], client: Any, groups: Sequence[JobGroup], timeout: float, logs: str,
                poll: float = 5.0) -> int:
    """Run the study command while watching the workers; its exit status.

    Workers lost one by one are Dask's business (it reruns their tasks on the others). When no
    worker at all has been connected for ``timeout`` seconds (every job cancelled, preempted or
    out of time) the study is stopped and :class:`SlurmError` names the queue state.
    """
    print(f"+ {show(cmd)}", flush=True)
    proc = subprocess.Popen(cmd)
    try:
        alone_since: float | None = None
        while True:
            try:
                return proc.wait(poll)
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if sum(connected(client).values()):
                alone_since = None
                continue
            alone_since = alone_since or now
            if now - alone_since > timeout:
                proc.terminate()
                proc.wait(60)
                ids = [j for g in groups for j in g.job_ids]
                raise SlurmError(f"no Dask worker left for {timeout:.0f} s (Slurm queue: {format_states(queue_states(ids))}); "
                                 f"the study was stopped: run the same command again to resume; worker logs in {logs}/")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
