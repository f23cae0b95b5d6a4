#!/usr/bin/env bash
# Show a fewshot job array running under a real Slurm: start a one-node
# cluster on this machine (Debian's slurm-wlm and munge, run as root, all
# state in a temporary folder), submit the script `bench plan --emit slurm`
# writes, wait for every task, print the merged table, stop the cluster.
#
#   FEWSHOT_DATA=../shared/datasets scripts/slurm-single-node.sh [bench run options...]
#
# Default options: a tiny two-seed run of the main job (three meta-steps,
# twelve test episodes per unit), which takes a few minutes. Needs root and
# `apt-get install slurm-wlm munge`; nothing outside the temporary folder
# is changed except munge's runtime folders.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "run as root (slurmd starts job steps as their user)" >&2
    exit 1
fi
for tool in slurmctld slurmd sbatch squeue munged; do
    command -v "$tool" >/dev/null || { echo "$tool is missing: apt-get install slurm-wlm munge" >&2; exit 1; }
done
if [ -z "${BENCH:-}" ]; then
    cargo build --release --quiet
    BENCH="$PWD/target/release/bench"
fi
options=("$@")
if [ ${#options[@]} -eq 0 ]; then
    options=(fewshot-5way1shot --smoke --meta-steps 3 --test-episodes 12 --only fomaml,reptile --seeds 0,1)
fi

work="$(mktemp -d /tmp/fewshot-slurm.XXXXXX)"
host="$(hostname -s)"
cpus="$(nproc)"
mem_mb="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
mkdir -p "$work/state" "$work/spool"
cat > "$work/slurm.conf" <<EOF
ClusterName=fewshot-demo
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/slurmctld.log
SlurmdLogFile=$work/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=demo Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$work/slurm.conf"

# munge authenticates the daemons and clients to each other.
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown -R munge:munge /run/munge /var/lib/munge /var/log/munge /etc/munge 2>/dev/null || true
if ! munge -n >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged
fi

cleanup() {
    for pid in "$work/slurmd.pid" "$work/slurmctld.pid"; do
        [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
    done
}
trap cleanup EXIT
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 30); do
    sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)' && break
    sleep 1
done
sinfo

run_dir="$work/run"
"$BENCH" plan "${options[@]}" --run-dir "$run_dir" --emit slurm --cpus-per-task 1 > "$work/job.sh"
cat "$work/job.sh"
job="$(BENCH="$BENCH" sbatch --parsable "$work/job.sh")"
echo "submitted job array $job"
while squeue -h -j "$job" 2>/dev/null | grep -q .; do
    squeue -j "$job"
    sleep 5
done
sacct -j "$job" 2>/dev/null || true
for out in "$run_dir"/slurm-*.out; do
    echo "== $(basename "$out"): $(tail -n 1 "$out")"
done
"$BENCH" show "$run_dir"
echo "run folder: $run_dir (logs of the cluster in $work)"
