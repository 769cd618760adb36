"""``subbit study``: the paper's claims with seeds, paired bootstrap intervals and a verdict each."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from subbit.commands._options import verb_parser


def register(subparsers: Any) -> None:
    from subbit.experiments.study import ARCHS, SECTIONS

    p = verb_parser(
        subparsers, "study", run,
        help="the paper's comparisons with seeds and confidence intervals: results.json, report.md, plots",
        description="""Train one fp32 base per architecture, fine-tune every recipe of every section from it
        with the same step budget (several seeds where a claim rests on the cell), evaluate WER on seen and
        held-out voices with paired bootstrap intervals, stream each exported file through the packed runtime,
        and decide each of the paper's claims. Resumes cell by cell: OUT/cells/ holds one small JSON per
        finished cell (commit it); checkpoints go to --work.""",
    )
    p.add_argument("--out", required=True, help="results folder: cells/, results.json, report.md, plots")
    p.add_argument("--work", help="checkpoints and runs (default OUT/work; keep it out of git)")
    p.add_argument("--data", help="corpus directory (default: the quick TTS corpus, or the dummy corpus with --quick)")
    p.add_argument("--quick", action="store_true", help="toy size for CI: tiny models, a few steps, 2 seeds")
    p.add_argument("--archs", default=",".join(ARCHS), help=f"comma-separated, of {','.join(ARCHS)}")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {','.join(SECTIONS)}")
    p.add_argument("--seeds", type=int, help="fine-tuning seeds for the cells a claim rests on (default 3; 2 quick)")
    p.add_argument("--preset", choices=("tiny", "small", "paper"), help="model size (default small; tiny quick)")
    p.add_argument("--fp32-steps", type=int, help="fp32 base training steps (default 3000; 40 quick)")
    p.add_argument("--steps", type=int, help="fine-tuning steps of every recipe (default 600; 4 quick)")
    p.add_argument("--lr", type=float, help="fine-tuning learning rate (default 5e-4)")
    p.add_argument("--eval-limit", type=int, help="first N utterances of each test split (default all)")
    p.add_argument("--runtime-limit", type=int, help="held-out utterances streamed through the runtime (default 300)")
    p.add_argument("--curve-every", type=int, help="dev WER every N fine-tuning steps for the convergence curves "
                   "(default steps/5; 0 = none)")
    p.add_argument("--only", help="comma-separated recipe names: run only their cells (e.g. a second worker "
                   "with its own --work); tune:FAMILY runs that family's dev search (fp32, qat, lsq, s8bqat, "
                   "s8bqat-lam, dkm, gq); the report still covers every planned row")
    p.add_argument("--report-only", action="store_true",
                   help="write results.json/report.md from the cell files in OUT/cells; train nothing")
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--replicates", metavar="DIR",
                   help="another study of the same recipes on a second fp32 base: write OUT/replication.md and "
                   ".json with both results per row and claim, and whether each verdict agrees")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from subbit.experiments.study import StudyConfig, run_study

    kw = dict(work=args.work, data=args.data, archs=tuple(a for a in args.archs.split(",") if a),
              sections=tuple(s for s in args.sections.split(",") if s), seeds=args.seeds, preset=args.preset,
              fp32_steps=args.fp32_steps, steps=args.steps, lr=args.lr, eval_limit=args.eval_limit,
              runtime_limit=args.runtime_limit, curve_every=args.curve_every, report_only=args.report_only or None,
              only=tuple(r for r in (args.only or '').split(',') if r) or None, threads=args.threads, progress=not args.no_progress,
              command="subbit " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    if args.quick:
        cfg = StudyConfig.quick_defaults(args.out, **kw)
    else:
        cfg = StudyConfig(out=args.out, **{k: v for k, v in kw.items() if v is not None})
    result = run_study(cfg)
    for c in result.claims:
        print(f"[{c['verdict']}] {c['claim']}: {c['evidence']}")
    if args.replicates:
        from subbit.experiments.study_replication import write

        result.files.update(zip(("replication", "replication-report"), write(args.out, args.replicates)))
    for name, path in result.files.items():
        print(f"wrote {name}: {path}")
    return 0
