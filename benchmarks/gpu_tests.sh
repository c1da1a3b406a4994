#!/usr/bin/env bash
# The tests that only run where CUDA exists (the CPU suite skips them): a real CUDA-graph capture
# against eager, graph replays against the loop path, the split graphs of the after-replay
# variant (train.graph_sync) against eager steps, and task sampling on the GPU. At most 90 s.
# Usage, from the repository root on a machine with a CUDA GPU, PyTorch and pytest:
#     bash benchmarks/gpu_tests.sh
# Exit status: pytest's (0 = all passed). A machine without CUDA reports them as skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
timeout 90 "${PYTHON:-python3}" -m pytest -q -rs -p no:cacheprovider \
    "tests/engine/test_capture_safety.py::test_real_capture_equals_eager_on_cuda" \
    "tests/engine/test_fast_path.py::test_captured_graph_replays_match_the_loop_path" \
    "tests/engine/test_fast_path.py::test_split_graphs_replay_like_eager_steps" \
    "tests/data/test_data_sampler.py::test_tasks_identical_on_cuda"
