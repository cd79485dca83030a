#!/usr/bin/env bash
# Sourced by the sbatch scripts. `run_with_requeue CMD...` runs the job step in the background; when the
# batch shell gets USR1 (sbatch --signal=B:USR1@SECONDS, sent before the time limit) or TERM (preemption)
# it passes USR1 on to the step (srun forwards it to the tasks, torchrun to the trainers), the trainers
# agree on a step, checkpoint and exit, and the job is requeued; the requeued job resumes by itself. A job
# that loses a host is requeued too (below).

DIST_INT_SIGNALS="SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"  # what torchrun forwards to its workers

# Threads per worker: the CPUs this job holds on the node (SLURM_CPUS_ON_NODE: ask with --cpus-per-gpu on
# GPU nodes, --cpus-per-task on CPU nodes) shared by the workers torchrun starts there, at least 1. Each
# worker must not take them all: 8 workers each with the allocation's thread count oversubscribe the node
# 8x, and spinning OpenMP threads can slow training tenfold. An OMP_NUM_THREADS set by the user wins.
set_worker_threads() {
    local procs=$1 cpus=${SLURM_CPUS_ON_NODE:-1}
    if [ -z "${DIST_INT_USER_THREADS:-}" ]; then
        export OMP_NUM_THREADS=$(( cpus / procs > 0 ? cpus / procs : 1 ))
    fi
    echo "dist_int: $procs worker(s) per node, $cpus CPU(s) on the node, OMP_NUM_THREADS=$OMP_NUM_THREADS" >&2
}
DIST_INT_USER_THREADS=${OMP_NUM_THREADS:-}

run_with_requeue() {
    local preempted=0 rc=0 child waited
    # A trainer that loses contact with a peer (a cut link, a dead or hung host; dist_int/engine/watchdog.py)
    # ends within train.timeout_s + 30 s and writes its one-line reason here. When srun then still runs,
    # it is waiting for a node SLURM cannot reach either, until the controller declares that node down
    # (SlurmdTimeout, often 300 s and more): the batch script requeues the job instead, and the rerun
    # resumes from the last complete checkpoint on whichever nodes SLURM gives it. When srun ends by itself
    # every node answered: a process died (a crash, the OOM killer), a rerun would likely meet it again,
    # and the job fails as any failed step does (docs/cluster.md, "Lost hosts").
    export DIST_INT_LOST_FILE="${TMPDIR:-/tmp}/dist_int-${SLURM_JOB_ID:-0}-$$.lost"
    export DIST_INT_BATCH_HOST=$(hostname)
    rm -f "$DIST_INT_LOST_FILE"
    trap 'preempted=1; echo "dist_int: preemption signal; asking the trainers to checkpoint" >&2;
          kill -USR1 "$child" 2>/dev/null || true' USR1 TERM
    "$@" &
    child=$!
    # Poll rather than `wait`: the line must be seen while srun still waits on the lost host. (A trapped
    # signal runs its trap once the current `sleep` has ended, within a second.)
    while kill -0 "$child" 2>/dev/null; do
        if [ "$preempted" = 0 ] && [ -s "$DIST_INT_LOST_FILE" ]; then
            waited=0  # srun ends a step whose nodes all answer within seconds (--kill-on-bad-exit)
            while kill -0 "$child" 2>/dev/null && [ "$waited" -lt "${DIST_INT_LOST_GRACE_S:-10}" ]; do
                sleep 1; waited=$((waited + 1))
            done
            if kill -0 "$child" 2>/dev/null; then
                trap - USR1 TERM
                rm -f "$DIST_INT_LOST_FILE"
                echo "dist_int: a host was lost ($(hostname) cannot reach it, nor can SLURM); requeueing job" \
                     "${SLURM_JOB_ID}: it resumes from the last complete checkpoint" >&2
                scontrol requeue "$SLURM_JOB_ID"
                # srun would wait up to KillWait for the lost node's share of the step: it is of no use now
                kill -KILL "$child" 2>/dev/null || true
                exit 0
            fi
            break
        fi
        sleep 1
    done
    wait "$child" && rc=0 || rc=$?
    trap - USR1 TERM
    if [ -s "$DIST_INT_LOST_FILE" ] && [ "$rc" != 0 ]; then
        echo "dist_int: a rank lost contact with a peer, but every node answered SLURM: a process died" \
             "(see above); not requeueing" >&2
    fi
    rm -f "$DIST_INT_LOST_FILE"
    if [ "$preempted" = 1 ] && [ "$rc" != 0 ]; then
        echo "dist_int: checkpoint written; requeueing job ${SLURM_JOB_ID}" >&2
        scontrol requeue "$SLURM_JOB_ID"  # an array task has a job id of its own too
        exit 0
    fi
    return "$rc"
}

# The launch command for one node: torchrun with c10d rendezvous on the job's first node.
torchrun_cmd() {
    local procs=$1 head port
    head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    port=${MASTER_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 20000))}
    echo "${PYTHON:-python3}" -m torch.distributed.run --nnodes "${SLURM_NNODES:-1}" \
        --nproc_per_node "$procs" --rdzv_backend c10d --rdzv_endpoint "$head:$port" \
        --rdzv_id "${SLURM_JOB_ID:-0}" --signals-to-handle "$DIST_INT_SIGNALS" \
        --shutdown-timeout "${SHUTDOWN_TIMEOUT:-120}"
}

# Processes per node: PROCS_PER_NODE, else the GPUs this node has, else 1.
procs_per_node() {
    if [ -n "${PROCS_PER_NODE:-}" ]; then echo "$PROCS_PER_NODE"; return; fi
    local n
    n=$(nvidia-smi -L 2>/dev/null | wc -l || true)
    [ "${n:-0}" -gt 0 ] && echo "$n" || echo 1
}
