#!/bin/bash
# Issue 14's measurements (bench/RESULTS.md, "Cached features and multi-fidelity search"): run from
# an empty folder; about 25 minutes on 2 cores. Then: python bench/fidelity_summary.py runs, and
# python bench/bench_fidelity_spearman.py runs/check16 $COMMON (and runs/check24-random).
set -e
PY=${PY:-python}
HERE=$(cd "$(dirname "$0")" && pwd)
# 1. a backbone a tuneddml trial trained on glyphs (matplotlib's fonts), saved
$PY -m tuneddml.train dataset=glyphs split=test loss=supcon epochs=8 steps_per_epoch=60 batch_size=64 seed=0 threads=1 --save glyphs_backbone.pt
# 2. the other dataset: glyphs-xl from the system fonts only (none of matplotlib's), fine-tuning or caching that backbone
COMMON="dataset=glyphs-xl dataset.matplotlib_fonts=false dataset.min_fonts=20 backbone=saved backbone.path=$PWD/glyphs_backbone.pt feature_cache=$PWD/cache"
for seed in 0 1 2; do   # the full search (the space's balance searcher, ASHA), training seeds 0-2
  $PY -m tuneddml.search --space=contrastive_balance --name full16-seed$seed --storage runs --json $COMMON seed=$seed
done
for seed in 0 1 2; do   # multi-fidelity: 16 cached configurations, the best 2 fine-tuned
  $PY -m tuneddml.multifidelity --space=contrastive_balance --rung features=cached:16 --rung full:2 --name mf16x2-seed$seed --storage runs --json $COMMON seed=$seed
done
# the check runs: every cached configuration also fine-tuned (fifo)
$PY -m tuneddml.multifidelity --space=contrastive_balance --rung features=cached:16 --rung full:4 --check --name check16 --storage runs $COMMON
sed 's/^searcher: balance/searcher: random/' "$HERE/../tuneddml/search_spaces/contrastive_balance.yaml" > contrastive_balance_random.yaml
$PY -m tuneddml.multifidelity --space=$PWD/contrastive_balance_random.yaml --rung features=cached:24 --rung full:4 --check --name check24-random --storage runs $COMMON
