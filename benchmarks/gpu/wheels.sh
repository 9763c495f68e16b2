#!/usr/bin/env bash
# Builds .whl/ in the repository root: the wheels of benchmarks/gpu/wheels.txt for the GPU machine (CPython 3.12,
# x86-64 manylinux), fetched with pip from the package index; nothing is installed here. .whl/ is git-ignored; name
# it in the device call's `carry`, where benchmarks/gpu/run.sh installs it with --no-index --no-deps.
#   bash benchmarks/gpu/wheels.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${PYTHON:-python3}
rm -rf .whl
mkdir .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
"$python" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  -d .whl -r benchmarks/gpu/wheels.txt
ls -l .whl
du -sh .whl
