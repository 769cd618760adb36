#!/bin/bash
# Automatic allocation vs uniform GQ at equal file size (docs/allocate.md, "Measured").
# usage: benchmarks/allocate_vs_uniform.sh FP32RUN WORKDIR STEPS BITS SEEDS...
# Fine-tunes uniform BITS-bit GQ (one run per seed), takes the exported file size of the first
# as the budget, runs `subbit allocate --budget` and fine-tunes its rules with the same steps and
# seeds; then: SPLIT=dev python benchmarks/allocate_eval.py DATA WORKDIR/*-s?
# env: SUBBIT (the subbit executable), METHOD (sensitivity measure, default mulaw)
set -euo pipefail
export OMP_NUM_THREADS=1
S=${SUBBIT:-subbit}
RUN=$1; W=$2; STEPS=$3; BITS=$4; shift 4
M=${METHOD:-mulaw}
mkdir -p $W
printf 'version: 1\ndefault: {method: gq, bits: %s, granularity: tensor}\n' $BITS > $W/uniform.yaml
for seed in "$@"; do
  [ -f $W/u-s$seed/final.pt ] || $S quantize $RUN --rules $W/uniform.yaml --out $W/u-s$seed --steps $STEPS --seed $seed --threads 1 --no-progress > $W/u-s$seed.log 2>&1
  $S export $W/u-s$seed --out $W/u-s$seed.subbit > /dev/null
done
B=$(stat -c %s $W/u-s$1.subbit)
echo "budget = uniform-$BITS file = $B B"
A=$W/auto-$M
$S allocate $RUN --budget $B --method $M --limit 64 --no-progress --out $A.yaml --json $A.json | tee $A.txt
for seed in "$@"; do
  [ -f $A-s$seed/final.pt ] || $S quantize $RUN --rules $A.yaml --out $A-s$seed --steps $STEPS --seed $seed --threads 1 --no-progress > $A-s$seed.log 2>&1
  $S export $A-s$seed --out $A-s$seed.subbit > /dev/null
done
