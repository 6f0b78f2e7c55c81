#!/usr/bin/env bash
# Installs T5X from source, the one way docs/pretrained.md and the launchers' --trainer t5x use:
# git checkouts, installed with --no-deps, T5X's remaining dependencies pinned by constraints.txt.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: launch/install_t5x.sh [--src DIR] [--pip PIP] [--dry_run]

Run from the root of this checkout, in an environment that already has dsbs-jax installed
(pip install -c constraints.txt ...). Clones google-research/t5x into DIR and google/airio and
google-research/jestimator next to it (a checkout already there is kept), installs the three
with `pip install --no-deps -e`, then the few packages they need that dsbs-jax does not, with
`-c constraints.txt`, so that nothing dsbs-jax pinned moves. --no-deps because their setup
files name git URLs and old pins (grain==0.2.12, tfds-nightly) not needed with current packages.

Then, from the root of this checkout, T5X's train finds our gin files and its own with
  python -m t5x.train --gin_search_paths=dsbs_jax/gin_configs,DIR ...
(DIR is ../t5x unless you chose another).

Options:
  --src DIR    where T5X's git checkout goes, relative to this checkout's root
               (default: $T5X_SRC, else ../t5x: next to this checkout)
  --pip PIP    the environment's pip (default: pip)
  --dry_run    print every command instead of running it
  -h, --help   this help
USAGE
}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
# shellcheck source=launch/common.sh
source "$HERE/common.sh"

SRC=$T5X_SRC PIP=pip
while [[ $# -gt 0 ]]; do
  case $1 in
    --src) SRC=$2; shift 2 ;;
    --pip) PIP=$2; shift 2 ;;
    --dry_run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
[[ -n $SRC ]] || die "--src is empty"
PIN=(-c "$REPO/constraints.txt")
NEXT_TO=$(dirname "$SRC")

clone() {
  if [[ -d $2/.git ]]; then
    echo "# $2: a checkout is already there; kept"
  else
    run git clone "$1" "$2"
  fi
}
clone https://github.com/google-research/t5x "$SRC"
clone https://github.com/google/airio "$NEXT_TO/airio"
clone https://github.com/google-research/jestimator "$NEXT_TO/jestimator"
run "$PIP" install "${PIN[@]}" --no-deps -e "$SRC" -e "$NEXT_TO/airio" -e "$NEXT_TO/jestimator"
run "$PIP" install "${PIN[@]}" fiddle chex jaxtyping cached_property grain
