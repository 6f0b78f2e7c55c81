#!/usr/bin/env bash
# Train on a Cloud TPU VM or pod slice: create it, install this repo on every worker, run the
# same trainer command on all of them (one process per host), stream the logs, tear it down.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: launch/tpu_vm.sh --name NAME --zone ZONE --accelerator TYPE [options] -- TRAINER_ARGS...

Creates a TPU VM (or a queued resource), installs this checkout on every worker, runs
`dsbs train --multihost ... --gin_file=<mesh>` (or T5X's t5x/train.py) on all workers with
`gcloud compute tpus tpu-vm ssh --worker=all`, streams the output to the terminal and to
./NAME.log, and deletes the TPU at the end (also on error or Ctrl-C) unless --keep.

Required:
  --name NAME            TPU name
  --zone ZONE            e.g. us-west4-a (v5e), us-central2-b (v4), us-east5-a (v5p)
  --accelerator TYPE     v4-8, v5litepod-16, v5litepod-256, v5p-128, ...
Options:
  --project PROJECT      gcloud project (default: gcloud's)
  --version VERSION      TPU runtime (default by generation: tpu-ubuntu2204-base,
                         v2-alpha-tpuv5-lite for v5e, v2-alpha-tpuv5 for v5p)
  --mesh GIN             mesh gin file (default from the accelerator, e.g. meshes/tpu_v5e_16.gin);
                         not added when a TRAINER_ARGS gin file includes it already (as
                         meshes/tpu_v5p_128_xxl.gin includes meshes/tpu_v5p_128.gin)
  --trainer dsbs|t5x     the native trainer (default) or T5X's t5x/train.py: installed on every
                         worker by launch/install_t5x.sh, its checkout at $T5X_SRC (default
                         ../t5x, next to the repository), and run from the repository with
                         --gin_search_paths=dsbs_jax/gin_configs,$T5X_SRC
  --queued               create through a queued resource (waits until it is ACTIVE)
  --spot                 spot capacity
  --python PY            Python >= 3.11 on the workers (default python3)
  --existing             use an existing TPU: no create, no install, no teardown
  --skip_install         do not copy and install the repo (already done)
  --keep                 do not delete the TPU at the end
  --dry_run              print every command instead of running it
  -h, --help             this help

TRAINER_ARGS go to the trainer unchanged, e.g.
  --gin_file=models/t5_1_1_base.gin --gin_file=runs/dsbs.gin
  --gin.MODEL_DIR=gs://BUCKET/runs/svamp --gin.MIXTURE_OR_TASK_NAME=svamp_dsbs
  --gin.TASK_FEATURE_LENGTHS="{'inputs': 256, 'targets': 256}" --gin.TRAIN_STEPS=10000
  --tfds_data_dir=gs://BUCKET/data
On a multi-host slice MODEL_DIR must be on storage every worker sees (gs://...): checkpoints
are written by all hosts together.
USAGE
}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
# shellcheck source=launch/common.sh
source "$HERE/common.sh"

NAME="" ZONE="" ACCEL="" PROJECT="" VERSION="" MESH="" TRAINER=dsbs PYTHON=python3
QUEUED=0 SPOT=0 EXISTING=0 SKIP_INSTALL=0 KEEP=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --name) NAME=$2; shift 2 ;;
    --zone) ZONE=$2; shift 2 ;;
    --accelerator) ACCEL=$2; shift 2 ;;
    --project) PROJECT=$2; shift 2 ;;
    --version) VERSION=$2; shift 2 ;;
    --mesh) MESH=$2; shift 2 ;;
    --trainer) TRAINER=$2; shift 2 ;;
    --python) PYTHON=$2; shift 2 ;;
    --queued) QUEUED=1; shift ;;
    --spot) SPOT=1; shift ;;
    --existing) EXISTING=1; SKIP_INSTALL=1; KEEP=1; shift ;;
    --skip_install) SKIP_INSTALL=1; shift ;;
    --keep) KEEP=1; shift ;;
    --dry_run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option '$1' (trainer arguments go after --; see --help)" ;;
  esac
done
[[ -n $NAME ]] || die "--name is required"
[[ -n $ZONE ]] || die "--zone is required"
[[ -n $ACCEL || $EXISTING == 1 ]] || die "--accelerator is required"
[[ $TRAINER == dsbs || $TRAINER == t5x ]] || die "--trainer must be dsbs or t5x"
[[ $# -gt 0 ]] || die "no trainer arguments after -- (at least --gin_file=runs/....gin)"

if [[ -z $MESH ]]; then
  case $ACCEL in
    v4-8) MESH=meshes/tpu_v4_8.gin ;;
    v5litepod-16) MESH=meshes/tpu_v5e_16.gin ;;
    v5litepod-256) MESH=meshes/tpu_v5e_256.gin ;;
    v5p-128) MESH=meshes/tpu_v5p_128.gin ;;
    *) die "no default mesh for '$ACCEL': pass --mesh meshes/....gin" ;;
  esac
fi
[[ -f $REPO/dsbs_jax/gin_configs/$MESH || -f $MESH ]] || die "$MESH: no such mesh gin file"
if [[ -z $VERSION ]]; then
  case $ACCEL in
    v5litepod-*) VERSION=v2-alpha-tpuv5-lite ;;
    v5p-*) VERSION=v2-alpha-tpuv5 ;;
    *) VERSION=tpu-ubuntu2204-base ;;
  esac
fi

G=(gcloud compute tpus)
WHERE=(--zone "$ZONE")
[[ -n $PROJECT ]] && WHERE+=(--project "$PROJECT")
REMOTE_DIR=dsbs-jax
VENV=dsbs-venv
# The trainer command, checked before anything is created; it runs in $REMOTE_DIR.
trainer_command "$TRAINER" "$MESH" "$REPO/dsbs_jax/gin_configs" -- "$@"

# ---------------------------------------------------------------- create
teardown() {
  if [[ $QUEUED == 1 ]]; then
    run "${G[@]}" queued-resources delete "$NAME" "${WHERE[@]}" --force --quiet
  else
    run "${G[@]}" tpu-vm delete "$NAME" "${WHERE[@]}" --quiet
  fi
}
if [[ $EXISTING == 0 ]]; then
  if [[ $QUEUED == 1 ]]; then
    create=("${G[@]}" queued-resources create "$NAME" --node-id "$NAME" "${WHERE[@]}"
      --accelerator-type "$ACCEL" --runtime-version "$VERSION")
    [[ $SPOT == 1 ]] && create+=(--spot)
    run "${create[@]}"
  else
    create=("${G[@]}" tpu-vm create "$NAME" "${WHERE[@]}" --accelerator-type "$ACCEL"
      --version "$VERSION")
    [[ $SPOT == 1 ]] && create+=(--spot)
    run "${create[@]}"
  fi
  if [[ $KEEP == 0 ]]; then
    if [[ $DRY_RUN == 1 ]]; then
      echo "# on exit (success, error or Ctrl-C):"
      teardown
    else
      trap teardown EXIT
    fi
  fi
  if [[ $QUEUED == 1 ]]; then
    state=("${G[@]}" queued-resources describe "$NAME" "${WHERE[@]}" --format='value(state.state)')
    if [[ $DRY_RUN == 1 ]]; then
      echo "# wait until ACTIVE:"
      run "${state[@]}"
    else
      until [[ $("${state[@]}") == ACTIVE ]]; do sleep 30; done
    fi
  fi
fi

# ---------------------------------------------------------------- install on every worker
SSH=("${G[@]}" tpu-vm ssh "$NAME" "${WHERE[@]}" --worker=all)
if [[ $SKIP_INSTALL == 0 ]]; then
  TARBALL=${TMPDIR:-/tmp}/dsbs-jax-$NAME.tar.gz
  # The checkout as committed, plus uncommitted changes to tracked files.
  run tar -czf "$TARBALL" -C "$REPO" --exclude=.git --exclude=.venv --exclude='*.egg-info' \
    --exclude=__pycache__ .
  run "${G[@]}" tpu-vm scp "$TARBALL" "$NAME:dsbs-jax.tar.gz" "${WHERE[@]}" --worker=all
  install="rm -rf $REMOTE_DIR && mkdir -p $REMOTE_DIR && tar -xzf dsbs-jax.tar.gz -C $REMOTE_DIR"
  install+=" && ($PYTHON -m venv $VENV || (sudo apt-get -qq update && sudo apt-get -qq install -y python3-venv && $PYTHON -m venv $VENV))"
  # Pinned to the versions the test suite passed with (constraints.txt).
  pin="-c ./$REMOTE_DIR/constraints.txt"
  install+=" && $VENV/bin/pip install -q -U pip && $VENV/bin/pip install -q $pin \"jax[tpu]\""
  install+=" && $VENV/bin/pip install -q $pin ./$REMOTE_DIR"
  if [[ $TRAINER == t5x ]]; then
    # T5X the one way (launch/install_t5x.sh), from $REMOTE_DIR as the trainer runs: its checkout
    # at T5X_SRC, which the trainer command searches for T5X's gin files.
    install+=" && cd $REMOTE_DIR && launch/install_t5x.sh --src $(quote "$T5X_SRC") --pip ../$VENV/bin/pip"
  fi
  run "${SSH[@]}" --command "$install"
fi

# ---------------------------------------------------------------- train on every worker
remote="cd $REMOTE_DIR && source ../$VENV/bin/activate && $(join_quoted "${TRAINER_CMD[@]}")"
if [[ $DRY_RUN == 1 ]]; then
  run "${SSH[@]}" --command "$remote"
else
  # All workers' output streams here (gcloud interleaves it) and into NAME.log.
  run "${SSH[@]}" --command "$remote" 2>&1 | tee -a "$NAME.log"
fi
