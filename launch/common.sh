# Shared by launch/tpu_vm.sh and launch/gpu_slurm.sh (sourced, not run).
# DRY_RUN=1 makes `run` print each command (one line, shell-quoted) instead of running it.

DRY_RUN=${DRY_RUN:-0}

# T5X, one way for launch/install_t5x.sh, both launchers' --trainer t5x, docs/pretrained.md and
# the gin_configs/t5x/ headers: T5X's git checkout (google-research/t5x, the folder that holds
# `t5x/`) is T5X_SRC, relative to this repository's root (default ../t5x, next to it); T5X's
# train runs from the repository root and searches our gin folder and T5X's checkout.
T5X_SRC=${T5X_SRC:-../t5x}
T5X_GIN_SEARCH_PATHS=dsbs_jax/gin_configs,$T5X_SRC

# Quotes one word for the shell, leaving plain words (flags, paths, names) bare; single quotes
# if it has none, else double quotes if nothing in it expands, else single quotes with '\''.
quote() {
  local s=$1 bad='[$`"\\!]'
  if [[ -n $s && $s =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$s"
  elif [[ $s != *"'"* ]]; then
    printf "'%s'" "$s"
  elif ! [[ $s =~ $bad ]]; then
    printf '"%s"' "$s"
  else
    printf "'%s'" "${s//\'/\'\\\'\'}"
  fi
}

# Quotes every word and joins them with spaces.
join_quoted() {
  local out="" w
  for w in "$@"; do out+="${out:+ }$(quote "$w")"; done
  printf '%s' "$out"
}

# Runs a command, or prints it under --dry_run.
run() {
  if [[ $DRY_RUN == 1 ]]; then
    printf '+ %s\n' "$(join_quoted "$@")"
  else
    printf '+ %s\n' "$(join_quoted "$@")" >&2
    "$@"
  fi
}

die() {
  printf '%s: error: %s\n' "$(basename "$0")" "$*" >&2
  exit 2
}

# Whether the gin file FILE (as --gin_file names it) is MESH or includes it, directly or through
# other includes, found in GIN_DIR or from the current folder (files not found here, such as
# T5X's, are not followed).
#   gin_includes GIN_DIR FILE MESH [DEPTH]
gin_includes() {
  local dir=$1 file=$2 mesh=$3 depth=${4:-0} path inc
  [[ $file == "$mesh" ]] && return 0
  ((depth < 20)) || return 1
  if [[ -f $dir/$file ]]; then
    path=$dir/$file
  elif [[ -f $file ]]; then
    path=$file
  else
    return 1
  fi
  while IFS= read -r inc; do
    gin_includes "$dir" "$inc" "$mesh" $((depth + 1)) && return 0
  done < <(sed -n "s/^include[[:space:]]*['\"]\([^'\"]*\)['\"].*/\1/p" "$path")
  return 1
}

# The trainer command every process runs, as a list in the array TRAINER_CMD, run from the
# repository root.
#   trainer_command KIND MESH_GIN GIN_DIR EXTRA_FLAGS... -- USER_ARGS...
# GIN_DIR is this checkout's dsbs_jax/gin_configs, where the user's gin files are looked at: the
# mesh file is added only when none of them already includes it (meshes/tpu_v5p_128_xxl.gin
# includes meshes/tpu_v5p_128.gin).
# KIND dsbs: `dsbs train --multihost --gin_file=MESH ARGS` (the mesh first, so that ARGS can
#            add meshes/fsdp.gin or override its macros).
# KIND t5x:  `python3 -m t5x.train` searching T5X_GIN_SEARCH_PATHS (our gin folder and T5X's
#            checkout), the mesh file, and T5X's partitioner bound to the mesh file's macros.
trainer_command() {
  local kind=$1 mesh=$2 gin_dir=$3
  shift 3
  local extra=()
  while [[ $# -gt 0 && $1 != -- ]]; do extra+=("$1"); shift; done
  [[ $# -gt 0 ]] && shift
  case $kind in
    dsbs | t5x) ;;
    *) die "--trainer must be dsbs or t5x, got '$kind'" ;;
  esac
  if [[ $kind == dsbs && (${1:-} == dsbs || ${1:-} == train) ]]; then
    die "the arguments after -- start with '$1': give only the flags of \`dsbs train\` (the launcher runs \`dsbs train --multihost\` itself)"
  fi
  local mesh_flag=("--gin_file=$mesh") args=("$@") i file
  for ((i = 0; i < ${#args[@]}; i++)); do
    case ${args[i]} in
      --gin_file=*) file=${args[i]#--gin_file=} ;;
      --gin_file) file=${args[i + 1]:-} ;;
      *) continue ;;
    esac
    if gin_includes "$gin_dir" "$file" "$mesh"; then
      mesh_flag=()
      printf '%s: --gin_file=%s includes %s: not added again\n' "$(basename "$0")" "$file" "$mesh" >&2
      break
    fi
  done
  if [[ $kind == dsbs ]]; then
    TRAINER_CMD=(dsbs train --multihost "${extra[@]}" "${mesh_flag[@]}" "$@")
  else
    TRAINER_CMD=(python3 -m t5x.train "--gin_search_paths=$T5X_GIN_SEARCH_PATHS" "${extra[@]}"
      "${mesh_flag[@]}" "$@"
      "--gin.partitioning.PjitPartitioner.num_partitions=%NUM_PARTITIONS"
      "--gin.partitioning.PjitPartitioner.model_parallel_submesh=%MODEL_PARALLEL_SUBMESH"
      "--gin.partitioning.standard_logical_axis_rules.parameter_partitioning_dims=%PARAMETER_PARTITIONING_DIMS"
      --alsologtostderr)
  fi
}
