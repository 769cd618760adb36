"""``subbit corpus``: build the embedded synthetic corpus, or import a real one into manifests."""

from __future__ import annotations

import argparse
import json


def _build(args: argparse.Namespace) -> int:
    from subbit.asr.corpus.build import BuildOptions, build_corpus

    opts = BuildOptions.create(hours=args.hours, quick=args.quick, seed=args.seed)
    if args.engines:
        opts = BuildOptions(**{**opts.__dict__, "engines": tuple(args.engines.split(","))})
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

    b = sub.add_parser("build", help="synthesise the default corpus (espeak-ng, flite, festival)")
    b.add_argument("--out", required=True, help="output folder (manifests, wav/, corpus.json)")
    b.add_argument("--hours", type=float, default=3.0, help="train audio to aim for (default 3)")
    b.add_argument("--quick", action="store_true", help="small corpus: 1500 train, 150 per eval split")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--jobs", type=int, default=2, help="synthesis processes (default 2)")
    b.add_argument("--engines", default="", help="comma list from espeak,flite,festival (default all installed)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(func=_build)

    i = sub.add_parser("import", help="write a manifest for a LibriSpeech or wav+txt folder")
    i.add_argument("src", help="source folder")
    i.add_argument("--format", required=True, choices=("librispeech", "wavtxt"))
    i.add_argument("--out", required=True, help="folder for NAME.jsonl and import-NAME.json")
    i.add_argument("--split", required=True, help="manifest name, e.g. train or dev-clean")
    i.add_argument("--json", action="store_true", help="also print the summary as JSON")
    i.set_defaults(func=_import)
