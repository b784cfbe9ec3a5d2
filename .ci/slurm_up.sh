#!/usr/bin/env bash
# Start a real one-node Slurm on this machine (CI and laptops; root, no systemd) so the Slurm
# grid and requeue tests run against sbatch/srun/scontrol, not a mock. Idempotent: returns at
# once when the controller already answers with this configuration (restarts the daemons when
# the configuration changed). Debian/Ubuntu packages: Slurm 22.05+.
set -euo pipefail

node_ready() { sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; }
if ! command -v slurmctld >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge >/dev/null
fi

# munge authenticates every Slurm RPC; it must run as its own user.
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown -R munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge
[ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged --force
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi

HOST=$(hostname -s)
# Not plain nproc: it obeys OMP_NUM_THREADS, which test processes set to 1 (a 1-CPU node
# would leave every 2-task job pending with reason PartitionConfig).
CPUS=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat > /etc/slurm/slurm.conf.new <<CONF
ClusterName=llava-ablate-ci
SlurmctldHost=${HOST}
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
ReturnToService=2
# Batch jobs may be requeued (preemption, \`scontrol requeue\`).
JobRequeue=1
# A requeued job may start again only cred_expire seconds after its requeue (BeginTime; the
# default is 120 s), and then at the scheduler's next pass (sched_interval, default 60 s;
# bf_interval, default 30 s): 10 s and 2 s keep the CI requeue test short. Step credentials
# live cred_expire seconds too: plenty on one node.
AuthInfo=cred_expire=10
MinJobAge=300
KillWait=10
SchedulerParameters=nohold_on_prolog_fail,sched_interval=2,bf_interval=2
NodeName=${HOST} CPUs=${CPUS} RealMemory=${MEM_MB} State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF

rm -f /etc/slurm/cgroup.conf  # proctrack/linuxproc + task/none: no cgroups (containers)
if cmp -s /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf && scontrol ping 2>/dev/null \
    | grep -q "is UP" && node_ready; then
  rm /etc/slurm/slurm.conf.new; echo "slurm: already up"; exit 0
fi
if scontrol ping 2>/dev/null | grep -q "is UP"; then  # an older configuration: restart
  scontrol shutdown >/dev/null 2>&1 || true
  for _ in $(seq 50); do pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || break
    sleep 0.2; done
fi
mv /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf
scontrol ping 2>/dev/null | grep -q "is UP" || /usr/sbin/slurmctld -i
pgrep -x slurmd >/dev/null || /usr/sbin/slurmd
for _ in $(seq 100); do
  node_ready && { echo "slurm: up (${CPUS} CPUs, ${MEM_MB} MB)"; exit 0; }
  sleep 0.2
done
echo "slurm: did not come up; see /var/log/slurm/" >&2
tail -20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
exit 1
