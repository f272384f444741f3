#!/usr/bin/env bash
# A throwaway two-node SLURM cluster on one host (munged, MariaDB, slurmdbd, slurmctld, slurmd) for the SLURM end-to-end test.
#
#   scripts/slurm/local_cluster.sh start  STATE_DIR   # write configs under STATE_DIR, start the daemons, wait for idle
#   scripts/slurm/local_cluster.sh stop   STATE_DIR   # cancel jobs, stop every daemon it started (by PID), unlink /etc
#   scripts/slurm/local_cluster.sh status STATE_DIR   # which daemons are alive, and sinfo
#
# Everything (configs, munge key and socket, MariaDB datadir, spool, logs, PID files) lives under STATE_DIR; the only
# file outside it is the /etc/slurm/slurm.conf (+ slurmdbd.conf) symlink, because the executor plugin strips every
# SLURM_* variable (SLURM_CONF included) before the job's inner srun, which then finds only the default path.
# Needs root (SlurmUser=root; jobs run as root) and the Debian packages installed by
# `scripts/install_system_deps.sh --slurm`. No systemd, no cgroups: proctrack/linuxproc, task/affinity.
# Cluster "local", partition "cpu", account "ci" (what the test passes as slurm_account / slurm_partition); partition
# "urgent" preempts "cpu" (PreemptMode=CANCEL, 30 s of grace), for the preemption test.
# Two nodes on this one host (two slurmd, `slurmd -N NAME`, each with its own port): `$(hostname -s)`, the first,
# whose name resolves (multi-node training meets there), and `$(hostname -s)-n2`; both report the host's CPUs.
# Ports (override with the environment variables): slurmctld 16817, slurmd 16818 and 16820, slurmdbd 16819, MariaDB 13307.
# Each node also declares LOCAL_SLURM_GPUS (default 2) `gpu` GRES backed by plain files, so GPU requests
# (`--gres=gpu:2`, srun --gpus-per-node) are scheduled as on a GPU cluster while CPU processes stand in for the GPUs
# (common.launch starts one per GPU; gloo on CPU). Jobs that ask for no GPU are unaffected.
set -Eeuo pipefail

CTLD_PORT=${LOCAL_SLURM_CTLD_PORT:-16817}
SLURMD_PORT=${LOCAL_SLURM_SLURMD_PORT:-16818}
SLURMD2_PORT=${LOCAL_SLURM_SLURMD2_PORT:-16820}
DBD_PORT=${LOCAL_SLURM_DBD_PORT:-16819}
DB_PORT=${LOCAL_SLURM_DB_PORT:-13307}
CLUSTER=local
PARTITION=cpu
ACCOUNT=ci
WAIT_S=${LOCAL_SLURM_WAIT_S:-90}
GPUS=${LOCAL_SLURM_GPUS:-2}
ETC=/etc/slurm
# Start order; stop runs it backwards.
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd slurmd.2)

usage() {
    echo "usage: $0 start|stop|status STATE_DIR" >&2
    exit 2
}

(($# == 2)) || usage
CMD=$1
[[ "$2" == /* ]] || { echo "STATE_DIR must be an absolute path, got '$2'" >&2; exit 2; }
S=${2%/}
HOST=$(hostname -s)

log() { echo "[local_cluster] $*" >&2; }

pid_of() { # pid recorded for daemon $1, or empty
    [[ -s "$S/pids/$1.pid" ]] && cat "$S/pids/$1.pid" || true
}

alive() { # is daemon $1 running under the PID we recorded (and not a recycled PID)?
    local pid
    pid=$(pid_of "$1")
    [[ -n "$pid" ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    local argv0
    argv0=$(tr '\0' '\n' <"/proc/$pid/cmdline" | head -n1)
    [[ "$(basename "$argv0")" == "${1%%.*}" ]]  # slurmd.2 is the second node's slurmd
}

wait_for() { # wait_for DESCRIPTION COMMAND...: poll COMMAND until it succeeds or WAIT_S passes
    local what=$1
    shift
    local deadline=$((SECONDS + WAIT_S))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            log "timed out after ${WAIT_S}s waiting for $what"
            return 1
        fi
        sleep 0.5
    done
}

spawn() { # spawn NAME LOGFILE COMMAND...: run a foreground daemon in its own session, record its PID
    local name=$1 logfile=$2
    shift 2
    # In a non-interactive shell the background child is no process-group leader, so setsid execs in place
    # and $! is the daemon itself; its own session keeps a Ctrl-C in the caller's terminal away from it.
    setsid "$@" >>"$logfile" 2>&1 </dev/null &
    echo $! >"$S/pids/$name.pid"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

node_idle() { [[ "$(sinfo -h -N -n "$HOST,$HOST-n2" -o %t 2>/dev/null | sort -u)" == idle ]]; }

dump_logs() {
    local f
    for f in "$S"/log/*.log "$S"/mysql/error.log; do
        [[ -s "$f" ]] || continue
        echo "----- tail of $f" >&2
        tail -n 20 "$f" >&2
    done
}

fail() {
    trap - ERR
    log "start failed: $*"
    dump_logs
    do_stop || true
    exit 1
}

link_etc() { # link STATE_DIR/etc/$1 to /etc/slurm/$1, refusing to replace a real or foreign config
    local name=$1 dst=$ETC/$1
    if [[ -e "$dst" || -L "$dst" ]]; then
        local target
        target=$(readlink "$dst" || true)
        if [[ "$target" == "$S/etc/$name" ]]; then
            return 0
        elif [[ -L "$dst" && ! -e "$dst" ]]; then
            log "replacing the dangling link $dst -> $target (a cluster whose state dir is gone)"
        else
            echo "$dst already exists (${target:-a real file}): another SLURM configuration is in use on this host." >&2
            echo "Stop that cluster first (scripts/slurm/local_cluster.sh stop <its STATE_DIR>); refusing to touch it." >&2
            exit 1
        fi
    fi
    mkdir -p "$ETC"
    ln -sfn "$S/etc/$name" "$dst"
}

write_configs() {
    local node
    # CPUs and topology as slurmd detects them, or LOCAL_SLURM_CPUS per node (more than the host has: jobs of a
    # paper-sized profile, e.g. a bundled group of 3 one-thread jobs, fit a 2-core test machine; slurmd accepts it
    # with config_overrides). RealMemory at 85% so the node is never drained for it.
    if [[ -n "${LOCAL_SLURM_CPUS:-}" ]]; then
        node="CPUs=$LOCAL_SLURM_CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$LOCAL_SLURM_CPUS ThreadsPerCore=1"
    else
        node=$(slurmd -C | head -n1 | sed -E 's/^NodeName=[^ ]+ //; s/ RealMemory=[0-9]+//')
    fi
    local mem
    mem=$(slurmd -C | head -n1 | sed -E 's/.*RealMemory=([0-9]+).*/\1/')
    mem=$((mem * 85 / 100))
    local db_pass
    db_pass=$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')

    cat >"$S/etc/slurm.conf" <<EOF
# Generated by scripts/slurm/local_cluster.sh for a throwaway two-node test cluster on one host.
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$S/munge/munge.socket.2
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$S/state/slurmctld
SlurmdSpoolDir=$S/state/slurmd.%n
SlurmctldPidFile=$S/run/slurmctld.pid
SlurmdPidFile=$S/run/slurmd.%n.pid
SlurmctldLogFile=$S/log/slurmctld.log
SlurmdLogFile=$S/log/slurmd.%n.log
# No cgroups: works in containers and on hosts without a delegated cgroup tree.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
# Accounting through slurmdbd, so sacct (the executor plugin's default status command) answers.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# For slurmdbd connections this names the munge socket (AuthInfo does not reach sacctmgr/sacct).
AccountingStoragePass=$S/munge/munge.socket.2
AccountingStorageEnforce=associations
JobCompType=jobcomp/none
# Keep sbatch --comment (the executor plugin writes rule_<name>_wildcards_<...> there) in sacct.
AccountingStoreFlags=job_comment
# GPUs (the stand-in GRES) in sacct's TRES, so a test can read what each job was given.
AccountingStorageTRES=gres/gpu
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# A job without --mem would otherwise take the whole node.
DefMemPerCPU=1000
# Reject impossible requests at sbatch instead of leaving them PENDING forever.
EnforcePartLimits=ALL
ReturnToService=2
MinJobAge=300
KillWait=5
MpiDefault=none
SlurmdParameters=config_overrides
MailProg=/bin/true
GresTypes=gpu
NodeName=$HOST NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$SLURMD_PORT $node RealMemory=$mem Gres=gpu:$GPUS State=UNKNOWN
NodeName=$HOST-n2 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$SLURMD2_PORT $node RealMemory=$mem Gres=gpu:$GPUS State=UNKNOWN
# Preemption as many clusters run it: a job of partition "urgent" preempts those of "$PARTITION", which get
# GraceTime seconds (SIGTERM at once, SIGKILL at its end) and are then cancelled: they end PREEMPTED.
PreemptType=preempt/partition_prio
PreemptMode=CANCEL
PartitionName=$PARTITION Nodes=$HOST,$HOST-n2 Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=30
PartitionName=urgent Nodes=$HOST,$HOST-n2 Default=NO MaxTime=INFINITE State=UP PriorityTier=2
EOF

    # Stand-in GPUs: plain files as their devices (slurmd counts a gpu GRES by its File entries; nothing opens them).
    local i
    mkdir -p "$S/dev"
    for ((i = 0; i < GPUS; i++)); do : >"$S/dev/gpu$i"; done
    cat >"$S/etc/gres.conf" <<EOF
AutoDetect=off
NodeName=$HOST,$HOST-n2 Name=gpu File=$S/dev/gpu[0-$((GPUS - 1))]
EOF

    cat >"$S/etc/slurmdbd.conf" <<EOF
# Generated by scripts/slurm/local_cluster.sh.
AuthType=auth/munge
AuthInfo=socket=$S/munge/munge.socket.2
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
LogFile=$S/log/slurmdbd.log
PidFile=$S/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$db_pass
StorageLoc=slurm_acct_db
EOF
    # slurmdbd refuses a config that others can read (it holds the DB password).
    chmod 600 "$S/etc/slurmdbd.conf"
    echo "$db_pass" >"$S/mysql/slurm.pass"
    chmod 600 "$S/mysql/slurm.pass"
}

db() { mariadb --no-defaults -S "$S/mysql/mysqld.sock" -u root "$@"; }

sacctmgr_ok() { sacctmgr -n list cluster format=cluster >/dev/null 2>&1; }

do_start() {
    [[ "$(id -u)" -eq 0 ]] || { echo "needs root (SlurmUser=root, and it links /etc/slurm/slurm.conf)" >&2; exit 1; }
    local bin missing=()
    for bin in munged mungekey mariadbd mariadb-install-db mariadb mariadb-admin slurmdbd slurmctld slurmd sinfo \
        sacctmgr scancel squeue; do
        command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
    done
    ((${#missing[@]} == 0)) || {
        echo "missing programs: ${missing[*]} (run scripts/install_system_deps.sh --slurm)" >&2
        exit 1
    }
    local all_alive=1 d
    for d in "${DAEMONS[@]}"; do alive "$d" || all_alive=0; done
    if ((all_alive)) && node_idle; then
        log "already running under $S"
        return 0
    fi
    for d in "${DAEMONS[@]}"; do
        alive "$d" && fail "$d is still running from an earlier start under $S; run: $0 stop $S"
    done
    local p
    for p in "$CTLD_PORT" "$SLURMD_PORT" "$SLURMD2_PORT" "$DBD_PORT" "$DB_PORT"; do
        port_free "$p" || { echo "port $p on 127.0.0.1 is in use; set LOCAL_SLURM_*_PORT (see $0)" >&2; exit 1; }
    done

    local t0=$SECONDS
    # From here on, any failing command stops what was started so far.
    trap 'fail "command failed (line $LINENO)"' ERR
    rm -rf "$S/etc" "$S/munge" "$S/mysql" "$S/state" "$S/run" "$S/log" "$S/pids"
    mkdir -p "$S"/{etc,mysql,state/slurmctld,"state/slurmd.$HOST","state/slurmd.$HOST-n2",run,log,pids}
    # munged insists that every directory above its socket is searchable by all.
    mkdir -p "$S/munge"
    chmod 755 "$S" "$S/munge"
    write_configs
    link_etc slurm.conf
    link_etc slurmdbd.conf
    link_etc gres.conf

    # munge: a fresh key and our own socket, so a host munged (if any) is neither used nor disturbed.
    mungekey -c -k "$S/munge/munge.key"
    spawn munged "$S/log/munged.log" munged -F --socket="$S/munge/munge.socket.2" --key-file="$S/munge/munge.key" \
        --pid-file="$S/run/munged.pid" --seed-file="$S/munge/munged.seed" --log-file="$S/log/munged.log"
    wait_for munged bash -c "munge -n -S '$S/munge/munge.socket.2' | unmunge -S '$S/munge/munge.socket.2'" ||
        fail "munged did not answer"

    # MariaDB for slurmdbd: private datadir, socket and TCP port; a small buffer pool.
    mariadb-install-db --no-defaults --user=root --datadir="$S/mysql/data" --auth-root-authentication-method=socket \
        --skip-test-db >"$S/log/mariadb-install-db.log" 2>&1 || fail "mariadb-install-db failed"
    spawn mariadbd "$S/log/mariadbd.log" mariadbd --no-defaults --user=root --datadir="$S/mysql/data" \
        --socket="$S/mysql/mysqld.sock" --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
        --pid-file="$S/run/mariadbd.pid" --log-error="$S/mysql/error.log" --innodb-buffer-pool-size=64M
    wait_for mariadbd mariadb-admin --no-defaults -S "$S/mysql/mysqld.sock" -u root ping || fail "mariadbd did not answer"
    local pass
    pass=$(cat "$S/mysql/slurm.pass")
    db -e "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
           GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;" || fail "creating the slurm DB user"

    spawn slurmdbd "$S/log/slurmdbd.stdout.log" slurmdbd -D
    wait_for slurmdbd sacctmgr_ok || fail "slurmdbd did not answer"
    # Cluster, account and user exist before slurmctld registers, so associations are enforced from the first job.
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
    sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description="local test account" Organization=local >/dev/null
    sacctmgr -i add user root Account="$ACCOUNT" DefaultAccount="$ACCOUNT" Cluster="$CLUSTER" >/dev/null

    spawn slurmctld "$S/log/slurmctld.stdout.log" slurmctld -D -i
    spawn slurmd "$S/log/slurmd.stdout.log" slurmd -D -N "$HOST"
    spawn slurmd.2 "$S/log/slurmd.2.stdout.log" slurmd -D -N "$HOST-n2"
    wait_for "nodes $HOST, $HOST-n2 idle in sinfo" node_idle || fail "the nodes never became idle"
    trap - ERR
    log "up in $((SECONDS - t0))s: cluster=$CLUSTER partition=$PARTITION account=$ACCOUNT nodes=$HOST,$HOST-n2 state=$S"
}

stop_pid() { # stop_pid NAME: SIGTERM the recorded PID, SIGKILL after 15 s
    local name=$1 pid i
    alive "$name" || return 0
    pid=$(pid_of "$name")
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 30; i++)); do
        alive "$name" || { log "stopped $name ($pid)"; return 0; }
        sleep 0.5
    done
    log "$name ($pid) ignored SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

do_stop() {
    if alive slurmctld; then
        local jobs i
        jobs=$(squeue -h -o %i 2>/dev/null || true)
        if [[ -n "$jobs" ]]; then
            log "cancelling jobs: $(echo $jobs)"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            # slurmd's step daemons outlive slurmd itself; let them finish the cancel first (under load, e.g. a
            # rehearsal stopped with 16 jobs running on 2 cores, 20 s left job processes behind).
            for ((i = 0; i < 120; i++)); do
                [[ -z "$(squeue -h -o %i 2>/dev/null)" ]] && break
                sleep 0.5
            done
        fi
    fi
    local k
    for ((k = ${#DAEMONS[@]} - 1; k >= 0; k--)); do
        stop_pid "${DAEMONS[k]}"
    done
    local name
    for name in slurm.conf slurmdbd.conf gres.conf; do
        [[ "$(readlink "$ETC/$name" 2>/dev/null || true)" == "$S/etc/$name" ]] && rm -f "$ETC/$name"
    done
    log "stopped; logs kept under $S/log"
}

do_status() {
    local d rc=0
    for d in "${DAEMONS[@]}"; do
        if alive "$d"; then echo "$d: running (pid $(pid_of "$d"))"; else echo "$d: not running"; rc=1; fi
    done
    ((rc == 0)) && sinfo
    return $rc
}

case "$CMD" in
    start) do_start ;;
    stop) do_stop ;;
    status) do_status ;;
    *) usage ;;
esac
