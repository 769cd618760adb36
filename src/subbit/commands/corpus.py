"""``subbit corpus``: build the embedded synthetic corpus, or import a real one into manifests."""

from __future__ import annotations

import argparse
import json


def _build(args: argparse.Namespace) -> int:
    from subbit.asr.corpus.build import BuildOptions, build_corpus

    engines = tuple(e.strip() for e in args.engines.split(",") if e.strip()) if args.engines else None
    extra: dict = {}
    if args.wake_word_share:
        extra["wake_word_share"] = args.wake_word_share
    if args.open_split:
        extra["open_split"] = True
    if args.augment:
        extra["augment"] = tuple(e.strip() for e in args.augment.split(",") if e.strip())
        extra["augment_share"] = args.augment_share
    if args.heldout_engine is not None:
        extra["heldout_engine"] = "" if args.heldout_engine == "none" else args.heldout_engine
    opts = BuildOptions.create(hours=args.hours, quick=args.quick, seed=args.seed, engines=engines, **extra)
    summary = build_corpus(args.out, opts, jobs=args.jobs, progress=not args.no_progress)
    if summary.get("cached"):
        print(f"{args.out}: up to date, nothing rebuilt")
    for split, info in summary["splits"].items():
        print(f"{split:13s} {info['utterances']:6d} utts {info['hours']:7.3f} h "
              f"{len(info['voices']):3d} voices {info['speakers']:3d} speakers")
    if not summary.get("cached"):
        print(f"built in {summary['build_seconds']} s -> {args.out}/corpus.json")
    return 0


def _import(args: argparse.Namespace) -> int:
    from subbit.asr.corpus.readers import import_corpus

    summary = import_corpus(args.format, args.src, args.out, args.split)
    print(f"{summary['split']}: {summary['utterances']} utterances, {summary['hours']} h, "
          f"{summary['speakers']} speakers -> {summary['manifest']}")
    if summary["skipped"]:
        print(f"skipped {summary['skipped']} file(s):")
        for item in summary["skipped_files"]:
            print(f"  {item['file']}: {item['reason']}")
    if args.json:
        print(json.dumps(summary, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("corpus", help="build the synthetic corpus or import a real one")
    sub = p.add_subparsers(dest="corpus_cmd", metavar="CMD")
    sub.required = True

    b = sub.add_parser("build", help="synthesise the default corpus (espeak-ng, flite, festival; Kokoro, Piper when installed)",
                       description="Synthesise grammar (and fortune) sentences with every installed TTS voice. "
                                   "Without --quick: 1,000-utterance test splits, a test_open split, Kokoro and "
                                   "Piper when installed and a whole engine held out; --quick keeps the small "
                                   "committed plan unless an option below asks for more.")
    b.add_argument("--out", required=True, help="output folder (manifests, wav/, corpus.json)")
    b.add_argument("--hours", type=float, default=3.0, help="train audio to aim for (default 3)")
    b.add_argument("--quick", action="store_true", help="small corpus: 1500 train, 150 per eval split")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--jobs", type=int, default=2, help="synthesis processes (default 2)")
    b.add_argument("--engines", default="",
                   help="comma list from espeak,flite,festival,kokoro,piper (default: all installed; with --quick "
                        "espeak,flite,festival)")
    b.add_argument("--wake-word-share", type=float, default=0.0, metavar="F",
                   help="share of utterances (0-1) with the wake word 'hey subbit' spoken first; its end time "
                        "goes to the manifest as wake_end (default 0)")
    b.add_argument("--open-split", action="store_true",
                   help="with --quick: open sentences in their own test_open split (the default without --quick)")
    b.add_argument("--augment", default="", metavar="EFFECTS",
                   help="comma list from pitch,vtlp,reverb,noise,telephone: one of them is baked into "
                        "--augment-share of the training audio (evaluation splits stay clean)")
    b.add_argument("--augment-share", type=float, default=0.3, metavar="F",
                   help="share of training utterances given one --augment effect (default 0.3)")
    b.add_argument("--heldout-engine", choices=("auto", "none", "festival", "flite", "kokoro", "piper"),
                   help="engine held out of training whole (default: auto without --quick, or with --quick "
                        "and a neural engine; none otherwise)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(func=_build)

    i = sub.add_parser("import", help="write a manifest for a LibriSpeech or wav+txt folder")
    i.add_argument("src", help="source folder")
    i.add_argument("--format", required=True, choices=("librispeech", "wavtxt"))
    i.add_argument("--out", required=True, help="folder for NAME.jsonl and import-NAME.json")
    i.add_argument("--split", required=True, help="manifest name, e.g. train or dev-clean")
    i.add_argument("--json", action="store_true", help="also print the summary as JSON")
    i.set_defaults(func=_import)
