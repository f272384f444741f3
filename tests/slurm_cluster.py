"""The local two-node SLURM test cluster (scripts/slurm/local_cluster.sh) as a context manager, for the
`slurm_cluster` fixture of conftest.py (tests/test_slurm.py and tests/test_rehearsal.py share one per session).

It starts munged, MariaDB, slurmdbd, slurmctld and two slurmd (so the executor plugin's default `sacct` status path
is the one tested) and stops each of them by PID, also when a test fails. One cluster per host: it owns
/etc/slurm/slurm.conf and fixed ports, so concurrent sessions queue on a file lock.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CLUSTER_SCRIPT = REPO / "scripts" / "slurm" / "local_cluster.sh"
PROGRAMS = ("munged", "mungekey", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd", "sbatch",
            "sacct", "sacctmgr")
SYSTEM_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
LOCK = Path(tempfile.gettempdir()) / "textless-slm-local-slurm.lock"


def skip_reason() -> str | None:
    missing = [p for p in PROGRAMS if shutil.which(p, path=SYSTEM_PATH) is None]
    if missing:
        return (f"SLURM Debian packages are not installed (missing {', '.join(missing)}); "
                "install them with `scripts/install_system_deps.sh --slurm`")
    if os.geteuid() != 0:
        return "the local SLURM cluster runs its daemons and jobs as root (and links /etc/slurm/slurm.conf)"
    return None


def run_script(command: str, state: Path) -> None:
    # 8 CPUs per node whatever the host has (a bundled group job asks for the sum of its jobs' threads), and 8
    # stand-in GPUs: slurm/profiles/2x8 runs as written, its trainers at the paper's world sizes (CPU processes).
    env = {"LOCAL_SLURM_CPUS": "8", "LOCAL_SLURM_GPUS": "8", **os.environ, "PATH": SYSTEM_PATH}
    out = subprocess.run(["bash", str(CLUSTER_SCRIPT), command, str(state)], capture_output=True, text=True,
                         timeout=300, env=env)
    if out.returncode != 0:
        pytest.fail(f"local_cluster.sh {command} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")


def running_daemons(state: Path) -> list[str]:
    """Daemons whose recorded PID still runs that daemon."""
    left = []
    for pid_file in sorted((state / "pids").glob("*.pid")):
        pid = pid_file.read_text().strip()
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            continue
        if Path(argv0).name == pid_file.stem.split(".")[0]:  # slurmd.2 is the second node's slurmd
            left.append(f"{pid_file.stem} ({pid})")
    return left


@contextmanager
def local_cluster() -> Iterator[Path]:
    """A running cluster (skips the test without the packages or root); yields its state directory."""
    reason = skip_reason()
    if reason:
        if os.environ.get("TEXTLESS_STRICT") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    with LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = Path(tempfile.mkdtemp(prefix="textless-slm-slurm-"))
        state.chmod(0o755)  # munged insists that every directory above its socket is searchable by all
        try:
            run_script("start", state)
            yield state
        finally:
            run_script("stop", state)
            left = running_daemons(state)
            shutil.rmtree(state, ignore_errors=True)
        assert not left, f"still running after local_cluster.sh stop: {left}"
