"""A throw-away single-node Slurm cluster for tests: munged, slurmctld and slurmd.

    python slurm/testing/cluster.py start [--dir DIR] [--cpus 8]   # prints: export SLURM_CONF=...
    python slurm/testing/cluster.py status [--dir DIR]
    python slurm/testing/cluster.py stop [--dir DIR]

Needs root. Installs Debian's ``slurm-wlm`` and ``munge`` with apt-get when they are
missing. Everything lives in one folder (a new temporary one unless ``--dir``): the
``slurm.conf``, a fresh munge key and socket, state, spool and logs; the daemons listen
on free ports, so this never touches a system Slurm or munge. Point the client commands
at it with ``SLURM_CONF=DIR/slurm.conf``. ``stop`` (DIR from ``--dir`` or from
``$SLURM_CONF``) cancels the cluster's jobs and stops exactly the daemons ``start``
started (their pids are in ``DIR/cluster.json``), and any job process they left behind.

Choices that matter on a small machine (see slurm/README.md): ``CPUs`` declared with
``SlurmdParameters=config_overrides`` (8 tasks on 2 cores), ``proctrack/linuxproc`` and
``task/none`` (no cgroups), ``MpiDefault=pmi2``, a short ``MinJobAge`` so ``sbatch --wait``
notices the end quickly, ``cred_expire=5`` so a requeued job restarts in seconds, and a
random ``FirstJobId``: MPICH names its node-local shared-memory segments after the PMI job
id srun gives it (``<jobid>.<step>``), so test clusters that all number their jobs from 1
(another session's, or an earlier one whose killed job left its segment in /dev/shm) would
hand a new job another job's segment and fail or hang its MPI_Init.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd")
STATE = "cluster.json"
CONF_TEMPLATE = """\
# Written by slurm/testing/cluster.py: a single-node test cluster, not for production.
ClusterName=mpisgdtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={dir}/munge/munge.socket,cred_expire=5
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/run/slurmctld.pid
SlurmdPidFile={dir}/run/slurmd.pid
SlurmctldLogFile={dir}/log/slurmctld.log
SlurmdLogFile={dir}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=pmi2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
MinJobAge=4
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
MessageTimeout=20
JobRequeue=1
FirstJobId={first_job_id}
NodeName={node} NodeAddr=127.0.0.1 NodeHostname={host} CPUs={cpus} RealMemory={mem} State=UNKNOWN
PartitionName=test Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


class ClusterError(RuntimeError):
    """The test cluster could not be started (the message says why)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mem_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return max(256, int(line.split()[1]) // 1024 // 2)
    return 1024


def _sbin(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name) if p.exists()), None)


def missing_programs() -> list[str]:
    names = list(DAEMONS) + ["sbatch", "srun", "scontrol", "sinfo", "squeue", "scancel"]
    return [n for n in names if _sbin(n) is None]


def ensure_packages(log=print) -> None:
    """apt-get install slurm-wlm and munge if any of their programs is missing (root only)."""
    if not missing_programs():
        return
    if os.geteuid() != 0:
        raise ClusterError("Slurm or munge is not installed and installing it needs root")
    if shutil.which("apt-get") is None:
        raise ClusterError(f"missing {', '.join(missing_programs())} and no apt-get to install "
                           f"{' '.join(PACKAGES)}")
    log(f"installing {' '.join(PACKAGES)} with apt-get ...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", *PACKAGES]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if r.returncode != 0 and cmd[1] == "install":
            raise ClusterError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    if missing_programs():
        raise ClusterError(f"still missing after apt-get: {', '.join(missing_programs())}")


def _write_munge_key(path: Path) -> None:
    path.write_bytes(os.urandom(1024))
    path.chmod(0o400)


class Cluster:
    """One test cluster living in ``dir``: ``start()``, ``wait_idle()``, ``stop()``."""

    def __init__(self, dir: Path):
        self.dir = Path(dir).resolve()
        self.conf = self.dir / "slurm.conf"
        self.procs: dict[str, subprocess.Popen] = {}   # started by this object
        self.pids: dict[str, int] = {}                   # or read back by attach()

    # ---- environment for clients -------------------------------------------------
    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: os.environ) with SLURM_CONF pointing at this cluster."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        for var in [k for k in env if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))]:
            if var != "SLURM_CONF":
                del env[var]
        return env

    def run(self, *cmd: str, timeout: float = 30,
            check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(list(cmd), env=self.env(), capture_output=True, text=True,
                           timeout=timeout)
        if check and r.returncode != 0:
            raise ClusterError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
        return r

    # ---- start -------------------------------------------------------------------
    def write_config(self, cpus: int = 8) -> None:
        for sub in ("munge", "state", "spool", "run", "log"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)
        (self.dir / "munge").chmod(0o755)
        host = socket.gethostname().split(".")[0]
        self.conf.write_text(CONF_TEMPLATE.format(
            dir=self.dir, host=host, node=host, cpus=cpus, mem=_mem_mib(),
            ctld_port=_free_port(), slurmd_port=_free_port(),
            first_job_id=random.randint(10_000, 60_000_000)))
        _write_munge_key(self.dir / "munge" / "munge.key")

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.dir / "log" / f"{name}.out", "ab")
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self.env(),
                                            start_new_session=True, cwd=str(self.dir))
        log.close()
        self._save()

    def _save(self) -> None:
        state = {"conf": str(self.conf), "pids": {n: p.pid for n, p in self.procs.items()}}
        (self.dir / STATE).write_text(json.dumps(state, indent=1))

    def start(self, cpus: int = 8, timeout: float = 60) -> "Cluster":
        """Write the config, start the three daemons, wait until the node is idle."""
        if os.geteuid() != 0:
            raise ClusterError("starting slurmd and slurmctld needs root")
        ensure_packages()
        self.write_config(cpus)
        m = self.dir / "munge"
        self._spawn("munged", [_sbin("munged"), "-F", "-f", f"--socket={m}/munge.socket",
                               f"--key-file={m}/munge.key", f"--pid-file={m}/munged.pid",
                               f"--seed-file={m}/munged.seed", f"--log-file={m}/munged.log"])
        self._wait(lambda: (m / "munge.socket").exists(), 15, "munged never created its socket")
        self._spawn("slurmctld", [_sbin("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._wait(self._controller_up, timeout, "slurmctld never answered 'scontrol ping'")
        host = socket.gethostname().split(".")[0]
        self._spawn("slurmd", [_sbin("slurmd"), "-D", "-N", host, "-f", str(self.conf)])
        self.wait_idle(timeout)
        return self

    def _controller_up(self) -> bool:
        r = self.run("scontrol", "ping", check=False)
        return r.returncode == 0 and "UP" in r.stdout

    def wait_idle(self, timeout: float = 60) -> None:
        self._wait(lambda: self.node_state() == "idle", timeout,
                   "the node never became idle")

    def node_state(self) -> str:
        r = self.run("sinfo", "-h", "-N", "-o", "%T", check=False)
        return r.stdout.strip() if r.returncode == 0 else ""

    def _wait(self, ok, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise ClusterError(f"{', '.join(dead)} exited during start-up; logs in "
                                   f"{self.dir / 'log'}:\n{self.logs()}")
            if ok():
                return
            time.sleep(0.3)
        raise ClusterError(f"{what} within {timeout:.0f} s; logs in {self.dir / 'log'}:\n"
                           f"{self.logs()}")

    def logs(self, tail: int = 15) -> str:
        parts = []
        for f in sorted((self.dir / "log").glob("*")) + [self.dir / "munge" / "munged.log"]:
            if f.is_file():
                lines = f.read_text(errors="replace").splitlines()[-tail:]
                parts.append(f"--- {f.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    # ---- status and stop ----------------------------------------------------------
    @classmethod
    def attach(cls, dir: Path) -> "Cluster":
        """The cluster a previous ``start`` left in ``dir`` (pids from its state file)."""
        self = cls(dir)
        if not (self.dir / STATE).exists():
            raise ClusterError(f"no test cluster in {self.dir} (no {STATE})")
        self.pids = json.loads((self.dir / STATE).read_text())["pids"]
        return self

    def pids_alive(self) -> dict[str, int]:
        """Our daemons still running: right program name, our folder on its command line."""
        pids = {n: p.pid for n, p in self.procs.items()} or self.pids
        return {n: pid for n, pid in pids.items() if _is_our_daemon(pid, n, str(self.dir))}

    def status(self) -> str:
        alive = self.pids_alive()
        lines = [f"SLURM_CONF={self.conf}"]
        lines += [f"{n}: {'pid ' + str(alive[n]) if n in alive else 'not running'}"
                  for n in DAEMONS]
        if "slurmctld" in alive:
            lines.append("node: " + (self.node_state() or "?"))
            lines.append(self.run("squeue", check=False).stdout.rstrip())
        return "\n".join(lines)

    def stop(self, timeout: float = 20) -> None:
        """Cancel every job, then stop our daemons and whatever job processes they left."""
        alive = self.pids_alive()
        if "slurmctld" in alive:
            jobs = self.run("squeue", "-h", "-o", "%A", check=False).stdout.split()
            if jobs:
                self.run("scancel", *jobs, check=False)
                _wait_until(lambda: not self.run("squeue", "-h", "-o", "%A",
                                                 check=False).stdout.strip(), 15)
        children = _descendants(alive["slurmd"]) if "slurmd" in alive else []
        for name in reversed(DAEMONS):            # slurmd, slurmctld, then munged
            if name in alive:
                _terminate(alive[name], timeout)
                if name in self.procs:
                    self.procs[name].wait(timeout=5)
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _is_our_daemon(pid: int, name: str, marker: str) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError, UnicodeDecodeError):
        return False
    return Path(argv[0]).name == name and any(marker in a for a in argv) and state != "Z"


def _descendants(root: int) -> list[int]:
    parents = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                parents[int(p.name)] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [root]
    while frontier:
        kids = [pid for pid, ppid in parents.items() if ppid in frontier]
        found += kids
        frontier = kids
    return found


def _terminate(pid: int, timeout: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if not _wait_until(lambda: not _alive(pid), timeout):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours counts as gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_until(ok, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return True
        time.sleep(0.2)
    return False


def _dir_from(args) -> Path:
    if args.dir:
        return Path(args.dir)
    conf = os.environ.get("SLURM_CONF")
    if conf and (Path(conf).parent / STATE).exists():
        return Path(conf).parent
    raise ClusterError("which cluster? pass --dir DIR or set SLURM_CONF=DIR/slurm.conf")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cluster.py", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["start", "stop", "status"])
    p.add_argument("--dir", help="cluster folder (start: default a new temporary folder; "
                                 "stop/status: default the folder of $SLURM_CONF)")
    p.add_argument("--cpus", type=int, default=8, help="CPUs the node declares (default 8)")
    p.add_argument("--timeout", type=float, default=60, help="seconds to wait for start-up")
    args = p.parse_args(argv)
    try:
        if args.command == "start":
            d = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="mpisgd-slurm-"))
            cluster = Cluster(d)
            try:
                cluster.start(args.cpus, args.timeout)
            except BaseException:
                cluster.stop()
                raise
            print(f"export SLURM_CONF={cluster.conf}")
        elif args.command == "status":
            print(Cluster.attach(_dir_from(args)).status())
        else:
            Cluster.attach(_dir_from(args)).stop()
    except ClusterError as exc:
        print(f"cluster.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
