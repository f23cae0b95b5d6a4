#!/usr/bin/env bash
# Run the standard table: every shipped benchmark of the table on its
# budgeted profile (or the profile given in $PROFILE), one run seed, each
# into runs/<benchmark>/<tag>/. Re-running the script with the same tag
# continues where it stopped (each run resumes from its checkpoints).
# Then `bench report` prints the leaderboard across benchmarks.
#
#   FEWSHOT_DATA=../shared/datasets scripts/run-table.sh [tag]
#
# BENCH overrides the binary (default: target/release/bench, built first);
# SEEDS=0,1,2 runs the main job (fewshot-5way1shot) over those run seeds.
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-$(date +%Y-%m-%d)}"
profile="${PROFILE:-budgeted}"
if [ -z "${BENCH:-}" ]; then
    cargo build --release --quiet
    BENCH=target/release/bench
fi
for b in mini-imagenet-5way5shot mini-imagenet-5way1shot omniglot-5way5shot \
         omniglot-20way1shot omniglot-20way5shot fewshot-5way1shot; do
    dir="runs/$b/$tag"
    extra=()
    if [ "$b" = fewshot-5way1shot ] && [ -n "${SEEDS:-}" ]; then
        extra=(--seeds "$SEEDS")
    fi
    if [ -f "$dir/resolved.yaml" ] || [ -f "$dir/plan.json" ]; then
        "$BENCH" run "$b" --profile "$profile" --run-dir "$dir" --resume "${extra[@]}"
    else
        "$BENCH" run "$b" --profile "$profile" --run-dir "$dir" "${extra[@]}"
    fi
done
"$BENCH" report
