#!/usr/bin/env bash
# Run HERE (a machine with PyPI), before the device call: downloads into .whl/ the wheels that the lent GPU
# machine lacks (its image has torch 2.11+cu130, transformers, typer, rich, pluggy, safetensors, pillow, numpy;
# no faiss, no pydantic, no soundfile) for its Python 3.12 on x86-64, and keeps .whl/ out of git.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .git/info && { grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude; }
rm -rf .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    faiss-cpu==1.15.1 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection \
    typing-extensions soundfile "setuptools>=77"
du -sh .whl
