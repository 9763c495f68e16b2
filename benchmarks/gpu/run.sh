#!/usr/bin/env bash
# The GPU measurement of BENCHMARKS.md ("GPU measurement"), start to finish, on the device machine:
#   bash benchmarks/gpu/run.sh [benchmarks/gpu/run.py flags]
# from the repository root with .whl/ (benchmarks/gpu/wheels.sh) carried. It installs the wheels and the project
# (--no-deps: the image's jax, flax, optax, orbax and torch are used as they are), then runs benchmarks/gpu/run.py
# with a deadline of SVREID_GPU_BUDGET seconds (default 480) counted from this script's start, install included.
# A missing .whl/ (when the image lacks its packages) or a project that does not import stops it at once, with
# one line, before any device time goes into measuring.
# Results: $OUT/gpu_benchmark.{json,md,log} and this console output in $OUT/console.log.
set -uo pipefail
start=$(date +%s)
budget=${SVREID_GPU_BUDGET:-480}
cd "$(dirname "$0")/../.."
out=${OUT:-$PWD/gpu_out}
mkdir -p "$out"
exec > >(tee -a "$out/console.log") 2>&1
python=${PYTHON:-python3}
site=${SVREID_SITE:-/tmp/svreid_site}

echo "== $(date -u +%FT%TZ) $(hostname), $(nproc) CPUs, $python = $($python --version 2>&1)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
# The packages of wheels.txt, by import name: without them every part would fail one by one, so a missing .whl/
# (not carried, or wheels.sh not run) stops here with one line instead.
modules="grain ml_collections simplejpeg clu tensorboardX array_record portpicker"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
    || { echo "run.sh: installing .whl/ failed (see pip's message above)"; exit 1; }
  echo "== installed $(ls .whl | wc -l) wheels into $site"
elif ! missing=$("$python" -c "
import importlib.util, sys
print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))" $modules) || [ -n "$missing" ]; then
  echo "run.sh: no .whl/ folder and this python lacks: ${missing:-?}; run 'bash benchmarks/gpu/wheels.sh' and carry .whl"
  exit 1
else
  echo "== no .whl/ folder; every package of wheels.txt is installed already"
fi
# The project itself, from this checkout, without its dependencies (the image's and .whl/'s are used as they
# are). --no-build-isolation builds with the image's setuptools, which must be 77 or later for pyproject.toml;
# with an older one the install fails and the checkout on PYTHONPATH serves instead.
if "$python" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade \
     --target "$site" . ; then
  echo "== installed svreid_jax into $site"
else
  echo "== installing svreid_jax failed; importing it from the checkout"
fi
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$python" - <<'PY'
import importlib.metadata as m
names = ["jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "ml-collections", "clu", "simplejpeg",
         "tensorboardX", "numpy", "torch", "torchvision", "svreid_jax"]
def version(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return "missing"
print("== versions: " + ", ".join(f"{n} {version(n)}" for n in names))
import svreid_jax, svreid_jax.train  # noqa: E401  (fails here, not in a part, if an import is broken)
print(f"== svreid_jax from {svreid_jax.__file__}")
PY
[ $? -eq 0 ] || { echo "run.sh: the project does not import (the traceback is above); nothing measured"; exit 1; }
echo "== install took $(( $(date +%s) - start )) s"
exec "$python" benchmarks/gpu/run.py --out "$out" --deadline $(( start + budget )) "$@"
