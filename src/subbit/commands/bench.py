"""``subbit bench``: streaming latency and memory of packed sub-8-bit models vs fp32 and int8;
``--sweep``: one architecture at widths in L2, in L3 and beyond L3, libsubbit vs int8."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from subbit.commands._options import add_json_out, verb_parser

SWEEP_OUT = Path("benchmarks") / "out"  # default place of the sweep's JSON and plot (git-ignored)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return vals


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def register(subparsers: argparse._SubParsersAction) -> None:
    from subbit.bench import PRESETS

    p = verb_parser(
        subparsers, "bench", run, help="streaming latency / memory: packed sub-8-bit vs fp32 and int8",
        description="subbit bench: builds the preset with random weights, runs fp32 PyTorch, torch.ao int8, "
                    "onnxruntime int8 and the packed runtime at each bit depth (each in its own process), "
                    "batch-1 streaming; prints a table, writes JSON and a plot. --sweep: the same architecture "
                    "at widths whose int8 weights fall in L2, in L3 and beyond L3 of this machine (read from "
                    "sysfs), libsubbit at each bit depth vs int8: time ratio next to byte ratio.",
    )
    p.add_argument("--preset", default=None, choices=sorted(PRESETS), help="default paper-rnnt")
    p.add_argument("--model", choices=("rnnt", "conformer"), default=None,
                   help="shorthand for --preset paper-MODEL")
    p.add_argument("--quick", action="store_true",
                   help="1 thread, bits 8,4,2, 3 s of audio, one timed pass (--sweep: 3 s, one pass, one round)")
    p.add_argument("--threads", type=_int_list, default=None, help="comma list, default 1,2")
    p.add_argument("--bits", type=_int_list, default=None, help="comma list, default 8,5,4,3,2,1 (--sweep: 1,2,4,8)")
    p.add_argument("--seconds", type=float, default=None, help="audio per pass (default 10; quick 3)")
    p.add_argument("--repeats", type=int, default=None, help="timed passes per variant (default 2; quick 1)")
    p.add_argument("--rounds", type=int, default=None,
                   help="run every variant this many times, interleaved; report medians (default 1; --sweep 3)")
    p.add_argument("--baselines", default=None,
                   help="comma list of fp32, torch-int8, ort-int8 ('none' for none); default all three "
                        "(--sweep: torch-int8,ort-int8)")
    p.add_argument("--libsubbit", action=argparse.BooleanOptionalAction, default=None,
                   help="rows libsubbit-Nbit: the C runtime alone (at each --threads, greedy decoding); "
                        "default on when the library loads")
    p.add_argument("--no-matvec", action="store_true", help="skip the single large matvec per bit depth")
    p.add_argument("--vocab-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--token-every", type=int, default=None,
                   help="decode load: emit one token every N encoder frames for every variant (same work; "
                        "random weights make free greedy emission arbitrary); 0 = plain greedy (default 3)")
    p.add_argument("--workdir", default=None, help="keep the artifacts here (default: a temporary dir)")
    add_json_out(p, "write the result JSON here (--sweep default: benchmarks/out/sweep-ARCH.json)")
    p.add_argument("--plot", default=None, help="write a PNG plot here (--sweep default: benchmarks/out/sweep-ARCH.png)")
    p.add_argument("--no-progress", action="store_true")
    s = p.add_argument_group("size sweep (--sweep)")
    s.add_argument("--sweep", action="store_true", help="run the size sweep instead of the variant table")
    s.add_argument("--max-weight-mb", type=_positive_float, default=None,
                   help="cap on a point's int8 weight MB (default 256); a capped point inside L3 is marked so")
    s.add_argument("--widths", type=_int_list, default=None,
                   help="explicit base widths (enc_hidden / d_model) instead of one per cache band")
    s.add_argument("--cache-dir", default=None,
                   help="sysfs cache directory to read (default /sys/devices/system/cpu/cpu0/cache)")


def _preset(args: argparse.Namespace) -> str:
    if args.model is not None:
        preset = f"paper-{args.model}"
        if args.preset is not None and args.preset != preset:
            raise SystemExit(f"subbit bench: --model {args.model} means --preset {preset}, not {args.preset}")
        return preset
    return args.preset or "paper-rnnt"


def _baselines(text: str | None, default: str) -> tuple[str, ...]:
    text = default if text is None else text
    return () if text.strip() == "none" else tuple(b.strip() for b in text.split(",") if b.strip())


def run(args: argparse.Namespace) -> int:
    if args.sweep:
        return run_sweep_cli(args)
    sweep_only = [f for f, v in (("--max-weight-mb", args.max_weight_mb), ("--widths", args.widths),
                                 ("--cache-dir", args.cache_dir)) if v is not None]
    if sweep_only:
        raise SystemExit(f"subbit bench: {', '.join(sweep_only)} only with --sweep")
    from subbit.bench import BenchOptions, format_table, quick_options, run_benchmark

    preset = _preset(args)
    over = {"bits": args.bits, "threads": args.threads, "seconds": args.seconds, "repeats": args.repeats,
            "rounds": args.rounds,
            "vocab_size": args.vocab_size, "seed": args.seed,
            "baselines": _baselines(args.baselines, "fp32,torch-int8,ort-int8"),
            "token_every": args.token_every, "libsubbit": _libsubbit_rows(args.libsubbit),
            "matvec": not args.no_matvec, "workdir": args.workdir}
    if args.quick:
        opts = quick_options(preset, **over)
    else:
        opts = BenchOptions(preset=preset, **{k: v for k, v in over.items() if v is not None})
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


def _libsubbit_rows(asked: bool | None) -> bool:
    """--libsubbit / --no-libsubbit, or by default: whether the C runtime is there to measure."""
    if asked is not None:
        return asked
    from subbit.runtime import native

    if not native.available():
        print("note: libsubbit not found (make libsubbit): no libsubbit-Nbit rows", file=sys.stderr)
        return False
    return True


def run_sweep_cli(args: argparse.Namespace) -> int:
    """``subbit bench --sweep``: options checked before anything is built, then table, JSON, plot."""
    not_here = [f for f, v in (("--threads", args.threads not in (None, (1,))), ("--libsubbit", args.libsubbit),
                               ("--token-every", args.token_every not in (None, 0)),
                               ("--no-matvec", args.no_matvec)) if v]
    if not_here:
        raise SystemExit(f"subbit bench --sweep: {', '.join(not_here)} do not apply (the sweep runs "
                         "libsubbit next to int8 at one thread, greedy decoding)")
    from subbit.bench.sweep import SweepOptions, format_sweep, run_sweep

    over = {"bits": args.bits, "seconds": args.seconds, "repeats": args.repeats, "rounds": args.rounds,
            "max_weight_mb": args.max_weight_mb, "widths": args.widths, "cache_dir": args.cache_dir,
            "workdir": args.workdir}
    if args.quick:
        over = {"seconds": 3.0, "repeats": 1, "rounds": 1, **{k: v for k, v in over.items() if v is not None}}
    try:
        opts = SweepOptions(preset=_preset(args), vocab_size=args.vocab_size, seed=args.seed,
                            baselines=_baselines(args.baselines, "torch-int8,ort-int8"),
                            **{k: v for k, v in over.items() if v is not None})
    except ValueError as exc:
        raise SystemExit(f"subbit bench --sweep: {exc}") from None
    result = run_sweep(opts, progress=not args.no_progress)
    print(format_sweep(result))
    out = Path(args.json_out or SWEEP_OUT / f"sweep-{opts.arch}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    from subbit.bench.plot import plot_sweep

    plot = Path(args.plot or out.with_suffix(".png"))
    plot.parent.mkdir(parents=True, exist_ok=True)
    plot_sweep(result, plot)
    print(f"wrote {plot}")
    return 0
