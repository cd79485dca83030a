#!/usr/bin/env bash
# A real SLURM cluster on this machine (munge + slurmctld + slurmd), for trying the sbatch scripts on a
# laptop and for the test suite. Needs root and Debian's slurm-wlm and munge packages.
#   slurm/local-cluster.sh start DIR [--nodes N]   # prints the line to export SLURM_CONF
#   slurm/local-cluster.sh exec DIR K CMD...        # runs CMD on host node-K (as its slurmd's jobs run)
#   slurm/local-cluster.sh stop DIR
# Without --nodes: one node, this host itself. With --nodes N (N >= 1): N hosts node-1..node-N, each a
# network namespace with its own address on a private bridge, its own hostname and /etc/hosts (every host
# resolves every node name), and its own slurmd; slurmctld runs on this host, at the bridge's address.
# `stop` removes every namespace, link and daemon it made, and nothing else (docs/cluster.md, "A local
# multi-host bed").
set -euo pipefail
usage="usage: local-cluster.sh start DIR [--nodes N] | exec DIR K CMD... | stop DIR"
cmd=${1:?$usage}
[ -n "${2:-}" ] || { echo "$usage" >&2; exit 2; }
if [ "$cmd" = stop ] && [ ! -d "$2" ]; then exit 0; fi   # no bed there: nothing to stop (and nothing made)
dir=$(mkdir -p "$2" && cd "$2" && pwd)
conf="$dir/slurm.conf"
# Names from the folder, so that two beds (two test sessions) never share a namespace or a bridge.
sum=$(printf '%s' "$dir" | cksum | awk '{print $1}')
tag=$((sum % 100000))
bridge="dib$tag"
ns_name() { echo "din$tag-$1"; }

# A private /24 for the bed: 10.(200..249).(0..249).0, both octets from the folder's checksum (12,500
# subnets), and the next one while an address of this host already lies in it (another bed, a VPN).
pick_subnet() {
    local i o2 o3 used
    used=$(ip -o -4 addr show 2>/dev/null | awk '{print $4}')
    for i in $(seq 0 12499); do
        o2=$((200 + (sum / 250 + i / 250) % 50)) o3=$(((sum + i) % 250))
        if ! grep -q "^10\.$o2\.$o3\." <<< "$used"; then
            echo "10.$o2.$o3"
            return 0
        fi
    done
    echo "no free 10.x.y.0/24 subnet for the bed" >&2
    return 1
}

# Kills the daemon a pid file names, only while that pid is still the daemon (a pid file left by a
# killed bed may name a process that got the number since).
kill_daemon() {
    local sig=$1 f=$2 pid
    [ -f "$f" ] || return 0
    pid=$(cat "$f" 2>/dev/null) || return 0
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    case "$(cat "/proc/$pid/comm" 2>/dev/null)" in
        slurmd|slurmctld) kill "$sig" "$pid" 2>/dev/null || true ;;
    esac
}

stop() {
    for f in "$dir"/slurmd*.pid "$dir/slurmctld.pid"; do
        kill_daemon -TERM "$f"
    done
    sleep 1
    for f in "$dir"/slurmd*.pid "$dir/slurmctld.pid"; do
        kill_daemon -KILL "$f"
        rm -f "$f"
    done
    if [ -f "$dir/nodes" ]; then
        for k in $(seq "$(cat "$dir/nodes")"); do
            ns=$(ns_name "$k")
            # Whatever still runs on that host (jobs of a killed slurmd) goes with it.
            for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
            ip netns del "$ns" 2>/dev/null || true
        done
        ip link del "$bridge" 2>/dev/null || true
        rm -f "$dir/nodes"
    fi
}

# Runs "$@" on host K: its network namespace, hostname and /etc/hosts.
on_host() {
    local k=$1; shift
    # nsenter, not `ip netns exec`: that remounts /sys, which hides the cgroup mounts slurmd needs.
    nsenter --net="/var/run/netns/$(ns_name "$k")" unshare --uts --mount sh -c \
        'mount --bind "$0" /etc/hosts && hostname "$1" && shift && exec "$@"' "$dir/hosts" "node-$k" "$@"
}

if [ "$cmd" = exec ]; then
    k=${3:?$usage}; shift 3
    on_host "$k" "$@"
    exit $?
fi
nodes=0
if [ "${3:-}" = --nodes ]; then
    nodes=${4:?$usage}
    [[ "$nodes" =~ ^[1-9][0-9]*$ ]] || { echo "--nodes needs a positive number, not '$nodes'" >&2; exit 2; }
    [ "$nodes" -le 200 ] || { echo "--nodes is at most 200" >&2; exit 2; }
fi
if [ "$cmd" = stop ]; then stop; exit 0; fi
[ "$cmd" = start ] || { echo "usage: local-cluster.sh start|stop DIR" >&2; exit 2; }
command -v slurmctld >/dev/null || { echo "slurmctld not found: apt-get install slurm-wlm munge" >&2; exit 1; }

# munge: one daemon per machine; start it when none answers.
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    [ -f /etc/munge/munge.key ] || mungekey --create
    chown -R munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge 2>/dev/null || true
    su -s /bin/sh munge -c munged 2>/dev/null || munged --force
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
host=$(hostname -s)
mkdir -p "$dir/state" "$dir/spool"
ctl_addr=127.0.0.1
node_lines="NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN"
spool="$dir/spool" slurmd_pid="$dir/slurmd.pid" slurmd_log="$dir/slurmd.log"
if [ "$nodes" -gt 0 ]; then
    [ "$(id -u)" = 0 ] || { echo "--nodes needs root (network namespaces)" >&2; exit 1; }
    stop  # a bed left by a killed run in this folder
    base=$(pick_subnet)
    ip link add "$bridge" type bridge
    ip addr add "$base.1/24" dev "$bridge"
    ip link set "$bridge" up
    echo "$nodes" > "$dir/nodes"
    ctl_addr=$base.1
    printf '127.0.0.1 localhost\n%s %s\n' "$ctl_addr" "$host" > "$dir/hosts"
    node_lines=""
    for k in $(seq "$nodes"); do
        ns=$(ns_name "$k")
        ip netns add "$ns"
        ip link add "dv$tag-$k" type veth peer name "dp$tag-$k"
        ip link set "dp$tag-$k" netns "$ns"
        ip -n "$ns" link set "dp$tag-$k" name eth0
        ip link set "dv$tag-$k" master "$bridge" up
        ip -n "$ns" addr add "$base.$((k + 1))/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
        echo "$base.$((k + 1)) node-$k" >> "$dir/hosts"
        node_lines+="NodeName=node-$k NodeAddr=$base.$((k + 1)) CPUs=$(nproc) State=UNKNOWN"$'\n'
    done
    spool="$dir/spool/%n" slurmd_pid="$dir/slurmd-%n.pid" slurmd_log="$dir/slurmd-%n.log"
fi
cat > "$conf" <<CONF
ClusterName=distint
SlurmctldHost=$host($ctl_addr)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobRequeue=1
MinJobAge=300
SchedulerParameters=sched_interval=1
StateSaveLocation=$dir/state
SlurmdSpoolDir=$spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$slurmd_pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$slurmd_log
$node_lines
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
export SLURM_CONF="$conf"
slurmctld -f "$conf"
if [ "$nodes" -gt 0 ]; then
    for k in $(seq "$nodes"); do
        mkdir -p "$dir/spool/node-$k"
        on_host "$k" slurmd -f "$conf" -N "node-$k"
    done
else
    slurmd -f "$conf"
fi
want=$(( nodes > 0 ? nodes : 1 ))
for _ in $(seq 150); do
    [ "$(sinfo -h -N -o %T 2>/dev/null | grep -cE '^idle')" -ge "$want" ] && { echo "export SLURM_CONF=$conf"; exit 0; }
    sleep 0.2
done
echo "the cluster did not come up; see $dir/slurmctld.log and $dir/slurmd*.log" >&2
stop
exit 1
