#!/usr/bin/env bash
# `make test-wheel`: build the wheel, install it (not editable) into a fresh venv, and run the installed
# command from an empty directory, so that nothing can come from the checkout: the bundled recipes,
# `demo --quick`, `train` by recipe name, a short `eval` and one request to `serve`.
# About 2.5 minutes on 2 cores (measured: 83 s to install, 46 s demo --quick, 20 s the rest). Keeps
# its files on failure (the path is printed).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
torch_version=${TORCH_VERSION:-2.13.0}
work=$(mktemp -d "${TMPDIR:-/tmp}/parallel-r1-wheel.XXXXXX")
venv=$work/venv
bin=$venv/bin
step() { printf '\n== %s (%ss)\n' "$*" "$SECONDS"; }
trap 'echo "test-wheel FAILED; files kept in $work" >&2' ERR

step "copy the sources (the build writes build/ and *.egg-info next to them, not into the checkout)"
mkdir -p "$work/src" "$work/run"
cp -a "$repo/pyproject.toml" "$repo/README.md" "$repo/src" "$repo/configs" "$work/src/"
find "$work/src" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +

step "fresh venv: torch==$torch_version first (a bare torch pulls a multi-GB CUDA build), then the wheel"
"$python" -m venv "$venv"
"$bin/pip" install -q --upgrade pip
"$bin/pip" install -q "torch==$torch_version"
"$bin/pip" wheel -q --no-deps -w "$work/wheel" "$work/src"
"$bin/pip" install -q "$work"/wheel/parallel_r1-*.whl

cd "$work/run"  # an empty directory: no configs/, no src/
step "parallel-r1 recipes"
"$bin/parallel-r1" recipes > recipes.txt
for name in demo smoke qwen3_4b_seen qwen3_4b_unseen_s1 qwen3_4b_unseen_s2 qwen3_4b_scaffold; do
    grep -q "$name" recipes.txt || { echo "recipes does not list $name" >&2; cat recipes.txt >&2; exit 1; }
done

step "parallel-r1 demo --quick"
"$bin/parallel-r1" demo --quick --output dq
test -f dq/report.md && test -d dq/model

step "parallel-r1 train smoke (shrunk with --set)"
"$bin/parallel-r1" train smoke --output smoke --set 'stages[0].steps=4' --set 'stages[1].steps=1'
test -s smoke/metrics.jsonl

step "parallel-r1 eval (a few toy problems)"
"$bin/parallel-r1" eval dq/model --benchmarks toy-hard --samples 1 --limit 4 --max-tokens 64 \
    --no-progress --output eval.json
test -s eval.json

step "parallel-r1 serve: start on 127.0.0.1, one request, stop"
"$bin/python" "$repo/scripts/serve_check.py" "$bin/parallel-r1" dq/model

step "passed"
rm -rf "$work"
