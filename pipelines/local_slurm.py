#!/usr/bin/env python
"""A throwaway one-node Slurm cluster on this machine: for tests, benchmarks and trying a recipe.

Needs root and Debian's ``slurm-wlm`` and ``munge`` packages (installed with apt when missing).
Everything lives in one folder: the munge key and socket, ``slurm.conf``, state, spool and logs.
The daemons (``munged``, ``slurmctld``, ``slurmd``) run in the foreground as children of this
process and are stopped by their process ids; no system service, file or port is touched
(free ports on 127.0.0.1, ``SLURM_CONF`` points the Slurm commands at this cluster only).

    sudo python pipelines/local_slurm.py --dir /tmp/slurm1      # starts, prints SLURM_CONF, waits for Ctrl-C

The configuration works in a container without systemd or cgroups:
``ProctrackType=proctrack/linuxproc``, ``TaskPlugin=task/none``, ``SelectType=select/cons_tres``
(``CR_Core``), no accounting, ``SlurmUser=root``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

#: commands the cluster needs, all from the slurm-wlm and munge packages
NEEDED = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel")
APT_PACKAGES = ("slurm-wlm", "munge")


class LocalSlurmError(RuntimeError):
    """The one-node cluster cannot be installed or started (the message names the log to read)."""


def _search_path() -> str:
    return os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin"  # the daemons live in sbin


def missing_commands() -> list[str]:
    """The commands of :data:`NEEDED` not on PATH (``/usr/sbin`` included)."""
    return [c for c in NEEDED if shutil.which(c, path=_search_path()) is None]


def ensure_installed() -> None:
    """Install ``slurm-wlm`` and ``munge`` with apt when a command is missing (root only)."""
    if not missing_commands():
        return
    if os.geteuid() != 0:
        raise LocalSlurmError(f"{', '.join(missing_commands())} not installed; as root: apt-get install slurm-wlm munge")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-qq", *APT_PACKAGES]
    res = subprocess.run(install, capture_output=True, text=True, env=env)
    if res.returncode != 0:  # a stale package list: update once and retry
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True, env=env)
        res = subprocess.run(install, capture_output=True, text=True, env=env)
    if res.returncode != 0 or missing_commands():
        tail = " ".join((res.stderr or res.stdout).split())[-400:]
        raise LocalSlurmError(f"apt-get install {' '.join(APT_PACKAGES)} failed ({tail}); install them by hand")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def host_memory_mb() -> int:
    """Physical memory of this machine in MiB (``MemTotal``)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise LocalSlurmError("/proc/meminfo has no MemTotal line")


def slurm_conf(root: Path, munge_socket: Path, hostname: str, cpus: int, memory_mb: int, partition: str,
               ports: tuple[int, int]) -> str:
    """The text of a one-node ``slurm.conf`` whose files all live under ``root`` (munge: ``munge_socket``)."""
    return "\n".join([
        "ClusterName=wsimil-local",
        f"SlurmctldHost={hostname}(127.0.0.1)",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket}",
        f"SlurmctldPort={ports[0]}",
        f"SlurmdPort={ports[1]}",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'run' / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'run' / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
        # no systemd, no cgroups in a container: track processes by parentage, bind nothing
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "SchedulerType=sched/backfill",
        "MpiDefault=none",
        "SwitchType=switch/none",
        "ReturnToService=2",
        "KillWait=5",
        # the node may declare more CPUs than the machine has (a test wants several jobs at once)
        "SlurmdParameters=config_overrides",
        f"NodeName={hostname} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
        f"PartitionName={partition} Nodes={hostname} Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


@dataclass
class LocalSlurm:
    """A one-node Slurm cluster rooted at ``root``; :meth:`start` it, :meth:`stop` it.

    ``cpus``: CPUs the node declares (may exceed the machine's); ``memory_mb``: its memory in
    MiB (default: the machine's); ``partition``: the one partition's name.
    """

    root: Path
    cpus: int = 2
    memory_mb: int | None = None
    partition: str = "debug"
    hostname: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    #: munged's socket folder: under /tmp, as munged wants every folder above its socket world-searchable
    socket_dir: Path | None = None

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """This process's environment pointed at this cluster (``SLURM_CONF``)."""
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def slurm(self, *args: str, timeout: float = 30) -> str:
        """Run a Slurm command (``sinfo``, ``squeue``, ``scancel`` ...) on this cluster; its stdout."""
        res = subprocess.run(list(args), capture_output=True, text=True, env=self.env, timeout=timeout)
        if res.returncode != 0:
            raise LocalSlurmError(f"{' '.join(args)} failed: {' '.join(res.stderr.split())}")
        return res.stdout

    def _daemon(self, name: str, argv: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")  # noqa: SIM115 - the daemon keeps it open
        argv = [shutil.which(argv[0], path=_search_path()) or argv[0], *argv[1:]]
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)
        log.close()

    def start(self, timeout: float = 60) -> LocalSlurm:
        """Install if needed, write the key and config, start the three daemons, wait for an idle node."""
        if os.geteuid() != 0:
            raise LocalSlurmError("a local Slurm cluster needs root (SlurmUser=root, munged)")
        ensure_installed()
        self.root = self.root.resolve()
        for sub in ("run", "state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.socket_dir = Path(tempfile.mkdtemp(prefix="wsimil-munge-", dir="/tmp"))
        self.socket_dir.chmod(0o755)
        sock = self.socket_dir / "munge.sock"
        key = self.root / "munge.key"
        if not key.exists():
            mungekey = shutil.which("mungekey", path=_search_path()) or "mungekey"
            subprocess.run([mungekey, "--create", f"--keyfile={key}"], check=True, capture_output=True)
        key.chmod(0o600)
        memory = self.memory_mb or host_memory_mb()
        self.conf.write_text(slurm_conf(self.root, sock, self.hostname, self.cpus, memory, self.partition,
                                        (free_port(), free_port())))
        run = self.root / "run"
        try:
            self._daemon("munged", ["munged", "--foreground", f"--socket={sock}", f"--key-file={key}",
                                    f"--pid-file={run / 'munged.pid'}", f"--log-file={self.root / 'log' / 'munged.log'}",
                                    f"--seed-file={self.root / 'munged.seed'}"])
            self._wait(sock.exists, 20, "munged", "munged.out")
            self._daemon("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
            self._wait(lambda: self._answers("sinfo"), 30, "slurmctld", "slurmctld.log")
            self._daemon("slurmd", ["slurmd", "-D", "-f", str(self.conf), "-N", self.hostname])
            self._wait(self.idle, timeout, "slurmd (node not idle)", "slurmd.log")
        except BaseException:
            self.stop()
            raise
        return self

    def _answers(self, *cmd: str) -> bool:
        try:
            self.slurm(*cmd, timeout=10)
        except (LocalSlurmError, subprocess.TimeoutExpired):
            return False
        return True

    def idle(self) -> bool:
        """True when the node is idle in ``sinfo``."""
        try:
            return self.slurm("sinfo", "-h", "-N", "-o", "%t", timeout=10).strip() == "idle"
        except (LocalSlurmError, subprocess.TimeoutExpired):
            return False

    def _wait(self, ready: Callable[[], bool], timeout: float, what: str, log: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = f"{', '.join(dead)} exited" if dead else f"not ready after {timeout:.0f} s"
                raise LocalSlurmError(f"{what}: {why}; see {self.root / 'log' / log}")
            time.sleep(0.5)

    def jobs(self) -> list[str]:
        """Ids of the jobs in this cluster's queue (any state)."""
        return self.slurm("squeue", "-h", "-o", "%i").split()

    def wait_empty(self, timeout: float = 30) -> bool:
        """Wait until the queue is empty (cancelled jobs leave it after their processes ended)."""
        deadline = time.monotonic() + timeout
        while self.jobs():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)
        return True

    def stop(self, timeout: float = 30) -> None:
        """Cancel every job, wait for the queue to empty, then stop the daemons this object started
        (by their process ids: SIGTERM, then SIGKILL after ``timeout`` seconds)."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            try:
                if self.jobs():
                    self.slurm("scancel", "--full", "--user", "root")
                self.wait_empty(timeout)
            except (LocalSlurmError, subprocess.TimeoutExpired):
                pass
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
            self.socket_dir = None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", type=Path, required=True, help="folder of the cluster's files (created)")
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs the node declares [this machine's]")
    p.add_argument("--partition", default="debug", help="partition name [debug]")
    a = p.parse_args(argv)
    cluster = LocalSlurm(a.dir, cpus=a.cpus, partition=a.partition)
    try:
        cluster.start()
    except LocalSlurmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"one-node Slurm cluster up; in another shell: export SLURM_CONF={cluster.conf}", flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # kill PID stops the daemons too
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
