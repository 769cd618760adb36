"""Transducer loss (utterance mean) and greedy WER of runs on one whole split (env SPLIT, default dev).

usage: SPLIT=test_seen python benchmarks/allocate_eval.py DATA RUN...
"""

from __future__ import annotations

import json
import os
import sys

import torch

from subbit.asr.checkpoint import load_run
from subbit.asr.data import read_manifest
from subbit.asr.evaluate import evaluate
from subbit.asr.sensitivity import dev_subset

torch.set_num_threads(1)
data, split = sys.argv[1], os.environ.get("SPLIT", "dev")
rows = {}
for run in sys.argv[2:]:
    loaded = load_run(run, "final")
    subset = dev_subset(loaded, data, limit=10**6, batch_size=8, split=split)
    loss = subset.loss_fn()(loaded.model.eval())
    res = evaluate(loaded.model, loaded.tokenizer, read_manifest(f"{data}/{split}.jsonl"), split=split,
                   frontend=loaded.frontend)  # fmt: skip
    rows[run] = {"split": split, "loss": loss, "wer": res.wer, "utterances": len(subset.ids)}
    print(split, run, f"loss {loss:.4f} wer {100 * res.wer:.2f}% ({len(subset.ids)} utts)", flush=True)
print(json.dumps(rows))
