#!/usr/bin/env bash
# Run a command where Slurm's commands cannot be found even where they are installed, as on a
# user's machine where Slurm was never installed: in a private mount namespace, /dev/null (a
# device, not an executable file) is bound over each one on PATH, so Python's
# `shutil.which("srun")` (submitit's check) finds nothing.  Usage: .ci/without_slurm.sh make test
set -euo pipefail
SLURM_COMMANDS=(srun sbatch scontrol squeue scancel sinfo sacct salloc)
if [ -z "${LLAVA_SLURM_HIDDEN:-}" ]; then
  exec unshare --mount --propagation private env LLAVA_SLURM_HIDDEN=1 "$0" "$@"
fi
IFS=: read -ra dirs <<<"$PATH"
for c in "${SLURM_COMMANDS[@]}"; do
  for d in "${dirs[@]}"; do
    if [ -f "$d/$c" ]; then mount --bind /dev/null "$d/$c"; fi
  done
done
for c in "${SLURM_COMMANDS[@]}"; do
  for d in "${dirs[@]}"; do
    if [ -f "$d/$c" ]; then echo "without_slurm: $d/$c is still there" >&2; exit 1; fi
  done
done
exec "$@"
