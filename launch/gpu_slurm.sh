#!/usr/bin/env bash
# Train on GPU nodes under SLURM: writes a batch script that runs the same trainer command in
# every task (one process per node, or one per GPU), with the coordinator taken from SLURM's
# environment, submits it with sbatch and follows its log.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: launch/gpu_slurm.sh --nodes N [options] -- TRAINER_ARGS...

Writes JOB_NAME.sbatch (in --log_dir), submits it with sbatch, and follows the job's log until
the job ends (Ctrl-C stops following, not the job; --no_follow only submits). Each task runs
`dsbs train --multihost --gin_file=<mesh> TRAINER_ARGS` (or T5X's t5x/train.py); the
coordinator is the job's first node (dsbs_jax.train.multihost reads SLURM_JOB_NODELIST,
SLURM_NTASKS, SLURM_PROCID), on a port derived from the job id.

Options:
  --nodes N              nodes (required)
  --gpus_per_node G      GPUs per node (default 8)
  --per node|gpu         one process per node seeing all its GPUs (default), or one per GPU
  --mesh GIN             mesh gin file (default meshes/gpu_8.gin, or meshes/gpu_1.gin when G=1)
  --trainer dsbs|t5x     the native trainer (default) or T5X's t5x/train.py: install it into
                         --venv first with launch/install_t5x.sh (its checkout at $T5X_SRC,
                         default ../t5x, next to the repository); tasks run it from the
                         repository with --gin_search_paths=dsbs_jax/gin_configs,$T5X_SRC
  --partition P          SLURM partition
  --account A            SLURM account
  --time T               time limit (default 24:00:00)
  --cpus_per_task C      (default 8 per GPU the task sees)
  --job_name NAME        (default dsbs)
  --venv PATH            virtual environment with this repo installed, on shared storage
                         (default: the current $VIRTUAL_ENV, else ./.venv)
  --log_dir DIR          where the batch script and logs go (default ./slurm_logs)
  --no_follow            submit and return
  --dry_run              print the batch script and every command instead of running them
  -h, --help             this help

MODEL_DIR must be on storage every node sees: checkpoints are written by all processes together.
USAGE
}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
# shellcheck source=launch/common.sh
source "$HERE/common.sh"

NODES="" GPUS=8 PER=node MESH="" TRAINER=dsbs PARTITION="" ACCOUNT="" TIME=24:00:00 CPUS=""
JOB=dsbs VENV=${VIRTUAL_ENV:-$REPO/.venv} LOG_DIR=slurm_logs FOLLOW=1
while [[ $# -gt 0 ]]; do
  case $1 in
    --nodes) NODES=$2; shift 2 ;;
    --gpus_per_node) GPUS=$2; shift 2 ;;
    --per) PER=$2; shift 2 ;;
    --mesh) MESH=$2; shift 2 ;;
    --trainer) TRAINER=$2; shift 2 ;;
    --partition) PARTITION=$2; shift 2 ;;
    --account) ACCOUNT=$2; shift 2 ;;
    --time) TIME=$2; shift 2 ;;
    --cpus_per_task) CPUS=$2; shift 2 ;;
    --job_name) JOB=$2; shift 2 ;;
    --venv) VENV=$2; shift 2 ;;
    --log_dir) LOG_DIR=$2; shift 2 ;;
    --no_follow) FOLLOW=0; shift ;;
    --dry_run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option '$1' (trainer arguments go after --; see --help)" ;;
  esac
done
[[ -n $NODES ]] || die "--nodes is required"
[[ $NODES =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a positive integer"
[[ $GPUS =~ ^[1-9][0-9]*$ ]] || die "--gpus_per_node must be a positive integer"
[[ $PER == node || $PER == gpu ]] || die "--per must be node or gpu"
[[ $TRAINER == dsbs || $TRAINER == t5x ]] || die "--trainer must be dsbs or t5x"
[[ $# -gt 0 ]] || die "no trainer arguments after -- (at least --gin_file=runs/....gin)"
if [[ -z $MESH ]]; then
  if [[ $GPUS == 1 && $NODES == 1 ]]; then MESH=meshes/gpu_1.gin; else MESH=meshes/gpu_8.gin; fi
fi
[[ -f $REPO/dsbs_jax/gin_configs/$MESH || -f $MESH ]] || die "$MESH: no such mesh gin file"

if [[ $PER == node ]]; then
  TASKS_PER_NODE=1 TASK_GPUS=$GPUS
else
  TASKS_PER_NODE=$GPUS TASK_GPUS=1
fi
CPUS=${CPUS:-$((8 * TASK_GPUS))}

trainer_command "$TRAINER" "$MESH" "$REPO/dsbs_jax/gin_configs" -- "$@"
CMD=$(join_quoted "${TRAINER_CMD[@]}")
if [[ $TRAINER == t5x ]]; then
  # T5X starts its own multi-process GPU runtime from these flags (expanded in each task).
  CMD+=' --multiprocess_gpu --coordinator_address=$DSBS_COORDINATOR'
  CMD+=' --process_count=$SLURM_NTASKS --process_index=$SLURM_PROCID'
fi
TASK_ENV='export DSBS_NUM_PROCESSES=$SLURM_NTASKS DSBS_PROCESS_ID=$SLURM_PROCID'
if [[ $PER == gpu ]]; then
  TASK_ENV+=' DSBS_LOCAL_DEVICE_IDS=$SLURM_LOCALID'
  COMMENT="# One process per GPU: each task sees the node's GPUs and takes the one at its local rank."
else
  COMMENT="# One process per node, seeing all its GPUs."
fi
SRUN="srun --kill-on-bad-exit=1 bash -c $(quote "$TASK_ENV; exec $CMD")"

SCRIPT="$LOG_DIR/$JOB.sbatch"
sbatch_script() {
  cat <<SBATCH
#!/bin/bash
#SBATCH --job-name=$JOB
#SBATCH --nodes=$NODES
#SBATCH --ntasks-per-node=$TASKS_PER_NODE
#SBATCH --gpus-per-node=$GPUS
#SBATCH --cpus-per-task=$CPUS
#SBATCH --time=$TIME
#SBATCH --output=$LOG_DIR/%x-%j.out
${PARTITION:+#SBATCH --partition=$PARTITION}
${ACCOUNT:+#SBATCH --account=$ACCOUNT}
set -euo pipefail
# Process 0 (on the first node) is the coordinator, on a port unique to this job.
export DSBS_COORDINATOR_PORT=\$((20000 + SLURM_JOB_ID % 20000))
export DSBS_COORDINATOR=\$(scontrol show hostnames "\$SLURM_JOB_NODELIST" | head -n 1):\$DSBS_COORDINATOR_PORT
source $(quote "$VENV/bin/activate")
cd $(quote "$REPO")
SBATCH
  printf '%s\n%s\n' "$COMMENT" "$SRUN"
}

if [[ $DRY_RUN == 1 ]]; then
  echo "# $SCRIPT:"
  sbatch_script | grep -v '^$'
  run mkdir -p "$LOG_DIR"
  run sbatch --parsable "$SCRIPT"
  [[ $FOLLOW == 1 ]] && run tail -F "$LOG_DIR/$JOB-JOBID.out"
  exit 0
fi
mkdir -p "$LOG_DIR"
sbatch_script | grep -v '^$' >"$SCRIPT"
JOB_ID=$(run sbatch --parsable "$SCRIPT")
JOB_ID=${JOB_ID%%;*}
echo "submitted job $JOB_ID; log $LOG_DIR/$JOB-$JOB_ID.out" >&2
if [[ $FOLLOW == 1 ]]; then
  tail -F "$LOG_DIR/$JOB-$JOB_ID.out" &
  TAIL=$!
  trap 'kill $TAIL 2>/dev/null' EXIT
  while squeue -h -j "$JOB_ID" 2>/dev/null | grep -q .; do sleep 20; done
  sleep 2
  sacct -j "$JOB_ID" --format=JobID,State,ExitCode,Elapsed -X 2>/dev/null || true
fi
