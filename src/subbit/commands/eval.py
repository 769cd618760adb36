"""``subbit eval``: WER of a run on a corpus split, as JSON plus a per-utterance errors file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from subbit.commands._options import add_json_out, add_no_progress, add_which, verb_parser

SPLITS = ("train", "dev", "test_seen", "test_heldout", "test_open")  # test_open: full corpus only


def register(subparsers: Any) -> None:
    p = verb_parser(
        subparsers, "eval", run,
        help="word error rate of a run on a corpus split",
        description="Decode DIR/SPLIT.jsonl with the run's model and score it with jiwer. RUN may also be an "
                    "exported .subbit file: its utterances are then streamed through the packed runtime "
                    "(libsubbit where it loads; greedy, 100 ms chunks, the keyword spotter's wake_end "
                    "passed to a Bifocal model), which is what build/subbit-stream prints per file.",
    )
    p.add_argument("run", metavar="RUN", help="run directory, or an exported .subbit file (needs --data)")
    p.add_argument("--data", help="corpus directory (default: the one the run was trained on)")
    p.add_argument("--split", default="test_heldout", help=f"manifest name in DIR, e.g. {', '.join(SPLITS)}")
    add_json_out(p, "write the result JSON here")
    p.add_argument("--method", choices=("greedy", "beam"), default="greedy")
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--streaming", action="store_true", help="decode chunk by chunk through the encoder's step API")
    p.add_argument("--chunk-frames", type=int, help="feature frames per streaming chunk (default: the model's)")
    p.add_argument("--errors", help="per-utterance errors file (.tsv, or .jsonl), worst first")
    p.add_argument("--limit", type=int, help="first N utterances only")
    add_which(p, "weights: final.pt (default; falls back to last) or a training checkpoint")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    add_no_progress(p)


def run(args: argparse.Namespace) -> int:
    if Path(args.run).is_file():
        return run_packed(args)
    # local: every verb module is imported to build --help; torch loads only for the verb that runs
    from subbit.asr.checkpoint import RunPaths
    from subbit.asr.data import read_manifest
    from subbit.asr.evaluate import evaluate
    from subbit.runs import load_run

    which = args.which
    if which == "final" and not RunPaths(Path(args.run)).final.is_file() and RunPaths(Path(args.run)).last.is_file():
        print(f"note: {args.run} has no final.pt yet; evaluating checkpoints/last.pt")
        which = "last"
    loaded = load_run(args.run, which=which, map_location=args.device)
    data = Path(args.data or loaded.config["data"])
    if not args.data and not data.is_dir():
        raise FileNotFoundError(f"the data directory stored in {Path(args.run) / 'config.json'} ({data}) is not "
                                "there (moved? relative to another directory?); pass --data")
    manifest = data / f"{args.split}.jsonl"
    if not manifest.is_file():
        raise FileNotFoundError(f"no manifest {manifest} (--split {args.split})")
    if args.beam < 1:
        raise ValueError(f"--beam must be >= 1, got {args.beam}")
    utts = read_manifest(manifest)
    result = evaluate(
        loaded.model,
        loaded.tokenizer,
        utts,
        method=args.method,
        beam=args.beam,
        streaming=args.streaming,
        chunk_frames=args.chunk_frames,
        batch_size=args.batch_size,
        limit=args.limit,
        device=args.device,
        split=args.split,
        run=str(args.run),
        progress=args.progress,
        frontend=loaded.frontend,
    )
    result.extra.update({"which": which, "quantized": loaded.quantized, "data": str(data)})
    return report(args, result)


def run_packed(args: argparse.Namespace) -> int:
    """``subbit eval FILE.subbit --data DIR``: the served model, scored (study.stream_utterances)."""
    from subbit.asr.data import read_manifest
    from subbit.asr.evaluate import EvalResult, score
    from subbit.experiments.study import STREAM_CHUNK, stream_utterances
    from subbit.runtime import PackedTransducer

    not_here = [f for f, bad in (("--method beam", args.method != "greedy"), ("--streaming", args.streaming),
                                 ("--chunk-frames", args.chunk_frames is not None),
                                 ("--which", args.which != "final"), ("--device", args.device != "cpu")) if bad]
    if not_here:
        raise SystemExit(f"subbit eval {args.run}: {', '.join(not_here)} apply to a run directory, not to a .subbit "
                         "file (the packed runtime streams greedily on the CPU)")
    if not args.data:
        raise SystemExit(f"subbit eval {args.run}: a .subbit file needs --data (the corpus directory)")
    manifest = Path(args.data) / f"{args.split}.jsonl"
    if not manifest.is_file():
        raise FileNotFoundError(f"no manifest {manifest} (--split {args.split})")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    utts = read_manifest(manifest)[: args.limit]
    model = PackedTransducer.from_file(args.run)  # the file is checked before any audio is read, and loaded once
    hyps, _, audio_s, weight_bytes = stream_utterances(model, utts)
    result = EvalResult(score([u.id for u in utts], [u.text for u in utts], hyps), split=args.split, run=str(args.run))
    result.extra.update({"served": True, "backend": model.backend, "chunk_samples": STREAM_CHUNK, "audio_s": audio_s,
                         "weight_bytes": weight_bytes, "data": str(args.data)})
    return report(args, result)


def report(args: argparse.Namespace, result: Any) -> int:
    """Print the summary; write the JSON and the errors file where asked."""
    from subbit.asr.evaluate import write_errors

    print(result.summary())
    if args.json_out:
        out = Path(args.json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    if args.errors:
        write_errors(args.errors, result)
        worst = sorted(result.utts, key=lambda u: -u.errors)[:3]
        for u in worst:
            if u.errors:
                print(f"  {u.id}: {u.errors} errors\n    ref: {u.ref}\n    hyp: {u.hyp}")
    return 0
