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
    local preempted=0 rc=0 child="" waited
    # A trainer that loses contact with a peer (a cut link, a dead or hung host; dist_int/engine/watchdog.py)
    # ends within train.timeout_s + 30 s and writes its one-line reason here. When srun then still runs,
    # it is waiting for a node SLURM cannot reach either, until the controller declares that node down
    # (SlurmdTimeout, often 300 s and more): the batch script requeues the job instead, and the rerun
    # resumes from the last complete checkpoint once SLURM has released the lost node (it answers again or
    # is declared down), there or on other nodes. When srun ends by itself SLURM reached every node: a
    # process died (a crash, the OOM killer) or only the ranks' network failed, a rerun would likely meet
    # the same, and the job fails as any failed step does (docs/cluster.md, "Lost hosts").
    export DIST_INT_LOST_FILE="${TMPDIR:-/tmp}/dist_int-${SLURM_JOB_ID:-0}-$$.lost"
    # The ranks compare this with their own SLURMD_NODENAME (srun sets it for every task)
    export DIST_INT_BATCH_HOST=${SLURMD_NODENAME:-$(hostname)}
    rm -f "$DIST_INT_LOST_FILE"
    trap 'preempted=1; echo "dist_int: preemption signal; asking the trainers to checkpoint" >&2;
          kill -USR1 "$child" 2>/dev/null || true' USR1 TERM
    "$@" &
    child=$!
    # Poll rather than `wait`: the line must be seen while srun still waits on the lost host. (A trapped
    # signal runs its trap once the current `sleep` has ended, within a second.)
    while kill -0 "$child" 2>/dev/null; do
        if [ -s "$DIST_INT_LOST_FILE" ]; then
            waited=0  # srun ends a step whose nodes all answer within seconds (--kill-on-bad-exit)
            while kill -0 "$child" 2>/dev/null && [ "$waited" -lt "${DIST_INT_LOST_GRACE_S:-10}" ]; do
                sleep 1; waited=$((waited + 1))
            done
            if kill -0 "$child" 2>/dev/null; then
                trap - USR1 TERM
                echo "dist_int: a host was lost (${DIST_INT_BATCH_HOST} cannot reach it, nor can SLURM)" >&2
                # srun would wait for the lost node's share of the step until SLURM gives up on that node
                kill -KILL "$child" 2>/dev/null || true
                rm -f "$DIST_INT_LOST_FILE"
                requeue_job
            fi
            break
        fi
        sleep 1
    done
    wait "$child" && rc=0 || rc=$?
    trap - USR1 TERM
    if [ -s "$DIST_INT_LOST_FILE" ] && [ "$rc" != 0 ] && [ "$preempted" = 0 ]; then
        echo "dist_int: a rank lost contact with a peer, but srun ended by itself (SLURM reached every node:" \
             "a process died, see above, or only the ranks' network failed); not requeueing" >&2
    fi
    rm -f "$DIST_INT_LOST_FILE"
    if [ "$preempted" = 1 ] && [ "$rc" != 0 ]; then
        echo "dist_int: checkpoint written" >&2
        requeue_job
    fi
    return "$rc"
}

# Requeue this job (an array task has a job id of its own too) and end the batch script; the rerun resumes
# from the last complete checkpoint. A job that cannot be requeued (submitted with --no-requeue, or the
# controller unreachable) fails, saying so, rather than ending as if it had completed.
requeue_job() {
    # said first: SLURM may end this script (SIGTERM) as soon as the requeue is accepted
    echo "dist_int: requeueing job ${SLURM_JOB_ID}; it resumes from the last complete checkpoint" >&2
    scontrol requeue "$SLURM_JOB_ID" && exit 0
    echo "dist_int: could not requeue job ${SLURM_JOB_ID}; submit the same command again, it resumes from" \
         "the last complete checkpoint" >&2
    exit 1
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
