#!/usr/bin/env bash
# The CPU-budget reproduction study on real Omniglot 5-way 1-shot (the paper, section 4), run on
# a 2-core CPU and published into docs/results/ by the tool itself.
#
#   1. `mamlpp bench`: one meta-iteration of the batched path vs the loop path (tasks one by one,
#      as the authors' code runs them), same machine, synthetic episodes of the real shapes.
#   2. MAML vs first-order MAML vs MAML++, seeds 0,1,2, each 1,000 meta-iterations of 8 tasks
#      (100 epochs x 10: the paper's 100 epochs with a shorter epoch, so MSL, DA and cosine
#      annealing act at the paper's fractions of training).
#   3. The whole ablation grid (11 variants), seed 0, 500 meta-iterations (100 x 5).
#   4. Copies the tables and plots into docs/results/, writes docs/results/PROVENANCE.md
#      (commands, git commit, versions, CPU, wall times) and docs/results/RESULTS.md, and fills
#      the Results section of docs/reproduce.md.
#
# Usage, from anywhere:  bash benchmarks/cpu_study.sh [OUT_DIR]      (default ~/mamlpp-study)
# Resumable: run it again (after Ctrl-C, a kill or a reboot) and it continues where it stopped;
# finished runs are skipped, interrupted ones resume from their last epoch checkpoint. It can run
# in the background:  nohup bash benchmarks/cpu_study.sh > ~/mamlpp-study.log 2>&1 &
#
# Cost (measured per iteration on this 2-core machine, see docs/reproduce.md): about 1.5 hours
# with the whole machine (2 runs in parallel, 1 thread each).
#
# Environment: DATA_DIR (Omniglot folder, default ../shared/data/omniglot beside the repository,
# else $MAMLPP_DATA), JOBS (2), MAIN_BUDGET (1000), GRID_BUDGET (500), VAL_TASKS (20),
# TOP_K (3), DOCS_DIR (docs/results), PYTHON (python3), PUBLISH (1: copy into docs/results),
# DRY_RUN=1 (check every command and print the plan; nothing is trained or written).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
out="${1:-${STUDY_DIR:-$HOME/mamlpp-study}}"
data="${DATA_DIR:-}"
if [ -z "$data" ]; then
    if [ -e "$repo/../shared/data/omniglot" ]; then data="$repo/../shared/data/omniglot";
    else data="${MAMLPP_DATA:-$HOME/.cache/mamlpp}"; fi
fi
jobs="${JOBS:-2}"
main_budget="${MAIN_BUDGET:-1000}"
grid_budget="${GRID_BUDGET:-500}"
val_tasks="${VAL_TASKS:-20}"
top_k="${TOP_K:-3}"
docs="${DOCS_DIR:-$repo/docs/results}"
py="${PYTHON:-python3}"
export PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

main_out="$out/cpu-5w1s-b$main_budget"
grid_out="$out/cpu-grid-5w1s-b$grid_budget"
common=(--dataset omniglot --ways 5 --shots 1 --tasks-per-batch 8 --val-tasks "$val_tasks"
        --test-tasks 600 --top-k "$top_k" --jobs "$jobs" --device cpu --data-dir "$data"
        --no-download --quiet)
main_cmd=(ablate "${common[@]}" --budget "$main_budget" --variants maml,fomaml,maml++
          --seeds 0,1,2 --out "$main_out")
grid_cmd=(ablate "${common[@]}" --budget "$grid_budget" --variants all --seeds 0
          --out "$grid_out")
bench_cmd=(bench --configs omniglot-5w1s --paths batched,loop --modes fp32 --device cpu
           --iters 5 --warmup 1 --threads "$jobs" --no-grad-check --json "$out/bench-cpu.json")
show() { printf 'mamlpp'; printf ' %q' "$@"; printf '\n'; }
publish_cmd=("$repo/tools/publish_results.py" publish --dest "$docs"
             --study "cpu-5w1s-b$main_budget=$main_out"
             --study "cpu-grid-5w1s-b$grid_budget=$grid_out"
             --bench "$out/bench-cpu.json" --fill "$repo/docs/reproduce.md"
             --command "MAIN_BUDGET=$main_budget GRID_BUDGET=$grid_budget bash benchmarks/cpu_study.sh $out"
             --command "$(show "${bench_cmd[@]}")"
             --command "$(show "${main_cmd[@]}")"
             --command "$(show "${grid_cmd[@]}")")

if [ "${DRY_RUN:-0}" = 1 ]; then
    echo "== dry run: study in $out, data $data, $jobs jobs =="
    "$py" -m mamlpp "${bench_cmd[@]}" --dry-run
    "$py" -m mamlpp "${main_cmd[@]}" --dry-run
    "$py" -m mamlpp "${grid_cmd[@]}" --dry-run
    "$py" "${publish_cmd[@]}" --dry-run
    exit 0
fi

mkdir -p "$out"
log="$out/study.log"
say() { echo "[$(date '+%F %T')] $*" | tee -a "$log"; }
say "study in $out (data $data, $jobs jobs); git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
"$py" "$repo/tools/publish_results.py" env --out "$out/environment.json" > /dev/null
if [ ! -s "$out/bench-cpu.json" ]; then  # first, while our own runs are not competing
    say "1/3 bench: $(show "${bench_cmd[@]}")"
    "$py" -m mamlpp "${bench_cmd[@]}" 2>&1 | tee -a "$log"
fi
say "2/3 MAML vs FOMAML vs MAML++: $(show "${main_cmd[@]}")"
"$py" -m mamlpp "${main_cmd[@]}" 2>&1 | tee -a "$log"
say "3/3 ablation grid: $(show "${grid_cmd[@]}")"
"$py" -m mamlpp "${grid_cmd[@]}" 2>&1 | tee -a "$log"
if [ "${PUBLISH:-1}" = 1 ]; then
    "$py" "${publish_cmd[@]}" 2>&1 | tee -a "$log"
    say "published into $docs; review and commit: git add docs/results docs/reproduce.md"
fi
say "study done"
