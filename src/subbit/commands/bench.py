"""``subbit bench``: streaming latency and memory of packed sub-8-bit models vs fp32 and int8."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from subbit.commands._options import add_json_out, verb_parser


def _int_list(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return vals


def register(subparsers: argparse._SubParsersAction) -> None:
    from subbit.bench import PRESETS

    p = verb_parser(
        subparsers, "bench", run, help="streaming latency / memory: packed sub-8-bit vs fp32 and int8",
        description="subbit bench: builds the preset with random weights, runs fp32 PyTorch, torch.ao int8, "
                    "onnxruntime int8 and the packed runtime at each bit depth (each in its own process), "
                    "batch-1 streaming; prints a table, writes JSON and a plot.",
    )
    p.add_argument("--preset", default="paper-rnnt", choices=sorted(PRESETS))
    p.add_argument("--quick", action="store_true", help="1 thread, bits 8,4,2, 3 s of audio, one timed pass")
    p.add_argument("--threads", type=_int_list, default=None, help="comma list, default 1,2")
    p.add_argument("--bits", type=_int_list, default=None, help="comma list, default 8,5,4,3,2,1")
    p.add_argument("--seconds", type=float, default=None, help="audio per pass (default 10; quick 3)")
    p.add_argument("--repeats", type=int, default=None, help="timed passes per variant (default 2; quick 1)")
    p.add_argument("--rounds", type=int, default=None,
                   help="run every variant this many times, interleaved; report medians (default 1)")
    p.add_argument("--baselines", default="fp32,torch-int8,ort-int8",
                   help="comma list of fp32, torch-int8, ort-int8 ('none' for none)")
    p.add_argument("--no-matvec", action="store_true", help="skip the single large matvec per bit depth")
    p.add_argument("--vocab-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--token-every", type=int, default=3,
                   help="decode load: emit one token every N encoder frames for every variant (same work; "
                        "random weights make free greedy emission arbitrary); 0 = plain greedy")
    p.add_argument("--workdir", default=None, help="keep the artifacts here (default: a temporary dir)")
    add_json_out(p, "write the result JSON here")
    p.add_argument("--plot", default=None, help="write a PNG plot here")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from subbit.bench import BenchOptions, format_table, quick_options, run_benchmark

    baselines = () if args.baselines.strip() == "none" else tuple(b.strip() for b in args.baselines.split(",") if b.strip())
    over = {"bits": args.bits, "threads": args.threads, "seconds": args.seconds, "repeats": args.repeats,
            "rounds": args.rounds,
            "vocab_size": args.vocab_size, "seed": args.seed, "baselines": baselines,
            "token_every": args.token_every,
            "matvec": not args.no_matvec, "workdir": args.workdir}
    if args.quick:
        opts = quick_options(args.preset, **over)
    else:
        opts = BenchOptions(preset=args.preset, **{k: v for k, v in over.items() if v is not None})
    result = run_benchmark(opts, progress=not args.no_progress)
    print(format_table(result))
    if args.json_out:
        out = Path(args.json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        print(f"wrote {out}")
    if args.plot:
        from subbit.bench.plot import plot_result

        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot_result(result, args.plot)
        print(f"wrote {args.plot}")
    return 0
