#!/usr/bin/env bash
# One prepared run on a lent GPU machine (no network there), under a hard time limit.
#
#   make gpu-data                      # here, once: .gpu-data/ = WebP archive + 300 JPEGs + wheels
#   bash benchmarks/gpu.sh [benchmarks.gpu options]   # there, from the repository root, with .gpu-data carried
#   MODULE=benchmarks.leaderboard bash benchmarks/gpu.sh [its options]   # the leaderboard rows instead
#
# Installs from .gpu-data/wheels only what is not installed (pip --no-index --no-deps --target /tmp/gpu-site),
# puts the repository on PYTHONPATH (no build step), runs benchmarks/gpu/ (python -m benchmarks.gpu) under `timeout` and writes everything
# under $OUT (default benchmarks/out/gpu): gpu.log (all output), gpu.json (the figures so far, rewritten after
# each section), env.txt (nvidia-smi, versions, installs). LIMIT_S (default 450) caps the whole script; benchmarks.gpu
# plans its sections for what is left minus 40 s. Device tool: run("bash benchmarks/gpu.sh", carry=[".gpu-data"]).
set -uo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS
OUT=${OUT:-benchmarks/out/gpu}
LIMIT_S=${LIMIT_S:-450}
PY=${PYTHON:-python3}
WHEELS=.gpu-data/wheels
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OUT

{
  nvidia-smi || echo "nvidia-smi failed"
  $PY -c 'import sys, torch; print(sys.version); print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
} >"$OUT/env.txt" 2>&1

# module:distribution pairs; a distribution is installed only if its module cannot be found (no imports: fast).
pairs="lightning_utilities:lightning-utilities torchmetrics:torchmetrics lightning:lightning fastcore:fastcore
  fastprogress:fastprogress fastdownload:fastdownload beartype:beartype plum:plum-dispatch
  fasttransform:fasttransform fastai:fastai jsonargparse:jsonargparse
  docstring_parser:docstring-parser typeshed_client:typeshed-client"
read -ra need < <($PY -c 'import importlib.util, sys
print(" ".join(d for m, d in (p.split(":") for p in sys.argv[1].split()) if importlib.util.find_spec(m) is None))' \
  "$pairs")
if ((${#need[@]})); then
  echo "installing from $WHEELS: ${need[*]}" | tee -a "$OUT/env.txt"
  $PY -m pip install -q --no-index --no-deps --no-cache-dir --target /tmp/gpu-site --find-links "$WHEELS" \
    "${need[@]}" 2>&1 | tee -a "$OUT/env.txt"
  export PYTHONPATH="$PYTHONPATH:/tmp/gpu-site"  # after the repository and after what the machine has
fi
$PY -m pip list 2>/dev/null | grep -iE '^(torch|torchvision|lightning|torchmetrics|fast|pillow|numpy)' >>"$OUT/env.txt"

left=$((LIMIT_S - (SECONDS - START)))
((left < 60)) && left=60  # a late start still gets a minute (and benchmarks.gpu 20 s of budget)
MODULE=${MODULE:-benchmarks.gpu}  # benchmarks.leaderboard: the leaderboard rows (its --out and --budget alike)
echo "gpu.sh: $left s left for $MODULE" | tee -a "$OUT/gpu.log"
timeout -k 10 "$left" $PY -m "$MODULE" --out "$OUT" --budget $((left - 40)) "$@" 2>&1 | tee -a "$OUT/gpu.log"
rc=${PIPESTATUS[0]}
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then  # 137: killed 10 s after SIGTERM (Lightning catches SIGTERM)
  echo "gpu.sh: $MODULE hit the $left s limit; what it wrote to $OUT so far stays" | tee -a "$OUT/gpu.log"
fi
exit "$rc"
