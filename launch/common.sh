# Shared by launch/tpu_vm.sh and launch/gpu_slurm.sh (sourced, not run).
# DRY_RUN=1 makes `run` print each command (one line, shell-quoted) instead of running it.

DRY_RUN=${DRY_RUN:-0}

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

# The trainer command every process runs, as a list in the array TRAINER_CMD.
#   trainer_command KIND MESH_GIN GIN_DIR EXTRA_FLAGS... -- USER_ARGS...
# KIND dsbs: `dsbs train --multihost --gin_file=MESH ARGS` (the mesh first, so that ARGS can
#            add meshes/fsdp.gin or override its macros).
# KIND t5x:  `python3 -m t5x.train` with our gin folder on the search path, the mesh file, and
#            T5X's partitioner bound to the mesh file's macros.
trainer_command() {
  local kind=$1 mesh=$2 gin_dir=$3
  shift 3
  local extra=()
  while [[ $# -gt 0 && $1 != -- ]]; do extra+=("$1"); shift; done
  [[ $# -gt 0 ]] && shift
  case $kind in
    dsbs)
      if [[ ${1:-} == dsbs || ${1:-} == train ]]; then
        die "the arguments after -- start with '$1': give only the flags of \`dsbs train\` (the launcher runs \`dsbs train --multihost\` itself)"
      fi
      TRAINER_CMD=(dsbs train --multihost "${extra[@]}" "--gin_file=$mesh" "$@")
      ;;
    t5x)
      TRAINER_CMD=(python3 -m t5x.train "--gin_search_paths=$gin_dir" "${extra[@]}"
        "--gin_file=$mesh" "$@"
        "--gin.partitioning.PjitPartitioner.num_partitions=%NUM_PARTITIONS"
        "--gin.partitioning.PjitPartitioner.model_parallel_submesh=%MODEL_PARALLEL_SUBMESH"
        "--gin.partitioning.standard_logical_axis_rules.parameter_partitioning_dims=%PARAMETER_PARTITIONING_DIMS"
        --alsologtostderr)
      ;;
    *) die "--trainer must be dsbs or t5x, got '$kind'" ;;
  esac
}
