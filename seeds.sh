#!/usr/bin/env bash
cd /work/main
export FEWSHOT_DATA=../shared/datasets
dir=runs/fewshot-5way1shot/2026-11-28-seeds
if [ -f $dir/plan.json ]; then r=--resume; else r=; fi
/usr/bin/time -v target/table-bin/bench-3753a3a run fewshot-5way1shot --seeds 0,1,2 --run-dir $dir $r
