"""``subbit allocate``: choose the bit depth of every kernel of an fp32 run for a size budget.

Measures (or reads from the cache) each kernel's dev-loss sensitivity at 1..8 bits, solves the
budgeted choice exactly (:mod:`subbit.quant.allocate`) and writes a rules file for
``subbit quantize --rules`` / ``subbit train --quant``. With ``--budget`` the budget is the
``.subbit`` file that ``subbit export`` writes after ``subbit quantize`` with these rules: kernels,
float tensors, and the header + tokenizer measured by a trial export (:func:`file_overhead_bytes`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from subbit.commands._options import add_json_out, add_no_progress, verb_parser

#: bytes added to the measured header for what a trial export cannot know: the quantized run's
#: path in the manifest (``source.run``) and a few digits of offsets and codebook names
HEADER_SLACK = 1024


def register(subparsers: Any) -> None:
    p = verb_parser(
        subparsers, "allocate", run,
        help="pick bits per kernel for a size budget (writes a rules file)",
        description="""Measure every kernel's dev-loss increase at 1..8 bits (one kernel quantized at a time,
        quick codebook fit; cached in RUN/sensitivity), choose the bit depths with the least predicted increase
        within the budget (exact dynamic programme), and write rules for `subbit quantize --rules`.""",
    )
    p.add_argument("run", metavar="RUN", help="fp32 run directory")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget", help="size of the exported .subbit file, e.g. 700KB, 1.5MiB, 250000 (bytes)")
    budget.add_argument("--avg-bits", type=float, help="weights-weighted average bits of the kernels "
                        "(codebooks not counted)")  # fmt: skip
    p.add_argument("--data", help="corpus directory with dev.jsonl (default: the one RUN was trained on)")
    p.add_argument("--fix", action="append", default=[], metavar="NAME=BITS",
                   help="pin a kernel (exact name, module name, re:REGEX or module type; repeatable)")
    p.add_argument("--min-bits", action="append", default=[], metavar="NAME=BITS", help="lower bound (repeatable)")
    p.add_argument("--max-bits", action="append", default=[], metavar="NAME=BITS", help="upper bound (repeatable)")
    p.add_argument("--method", choices=("mulaw", "kmeans", "fisher"), default="mulaw",
                   help="sensitivity: dev-loss increase with GQ's mu-law start grid (default) or 1-D k-means, "
                        "or a diagonal-Fisher estimate of it")  # fmt: skip
    p.add_argument("--granularity", choices=("tensor", "channel"), default="tensor", help="codebooks per kernel")
    p.add_argument("--quant-method", default="gq", help="quantizer the rules name (default gq)")
    p.add_argument("--limit", type=int, default=64, help="dev utterances the loss is measured on")
    p.add_argument("--cache-dir", help="where measurements are cached (default RUN/sensitivity)")
    add_json_out(p, "also write the allocation as JSON here")
    add_no_progress(p, "no progress bar")
    p.add_argument("--out", required=True, help="rules file to write (.yaml, .yml or .json)")


def file_overhead_bytes(loaded: Any, rules: dict[str, Any]) -> int:
    """Bytes of the ``.subbit`` file that are not tensor data (header, manifest, tokenizer), from a
    trial export of the run's model prepared with ``rules`` at 8 bits everywhere (the largest
    offsets), plus :data:`HEADER_SLACK`."""
    import copy

    import subbit.quant as sq
    from subbit.export import export_model

    widest = copy.deepcopy(rules)
    widest["default"] = {**widest["default"], "bits": 8}
    widest["rules"] = {k: {**v, "bits": 8} for k, v in widest["rules"].items()}
    model = sq.prepare(copy.deepcopy(loaded.model), sq.QuantConfig.from_dict(widest))
    sq.convert(model)
    arch = getattr(model, "config", None)
    arch = dict(arch) if isinstance(arch, dict) else dict(loaded.config.get("model", {}))
    extra = {"features": loaded.config.get("features"), "quant": rules, "source": {"run": "", "which": "final"}}
    with tempfile.TemporaryDirectory() as tmp:
        summary = export_model(model, Path(tmp) / "trial.subbit", arch=arch, tokenizer_bytes=loaded.tokenizer.to_bytes(),
                               extra=extra, tokenizer_kind=str(getattr(loaded.tokenizer, "kind", "bytes")))  # fmt: skip
    data = sum(t.stored for t in summary.tensors if t.kind in ("quantized", "float"))
    return int(summary.file_bytes - data + HEADER_SLACK)


def run(args: argparse.Namespace) -> int:
    from subbit.asr.sensitivity import allocate_for_run, load_fp32_run
    from subbit.quant.allocate import Constraints, parse_size
    from subbit.quant.rules import QuantConfig

    out = Path(args.out)
    if out.suffix.lower() not in (".yaml", ".yml", ".json"):  # fail before minutes of measurement
        raise ValueError(f"--out: {out}: unknown rules format {out.suffix!r}; use .yaml, .yml or .json")
    cons = Constraints.from_strings(args.fix, args.min_bits, args.max_bits)
    budget = parse_size(args.budget) if args.budget is not None else None
    spec = {"method": args.quant_method, "granularity": args.granularity}
    loaded = load_fp32_run(args.run)
    overhead = 0
    common = dict(constraints=cons, method=args.method, spec=spec, limit=args.limit, cache_dir=args.cache_dir,
                  progress=args.progress)  # fmt: skip
    if budget is not None:
        # the header holds the rules, so measure it with rules of the final shape (one per kernel)
        first = allocate_for_run(loaded, args.data, avg_bits=8.0, **common)
        overhead = file_overhead_bytes(loaded, first.allocation.rules())
    res = allocate_for_run(loaded, args.data, budget_bytes=budget, avg_bits=args.avg_bits, overhead_bytes=overhead,
                           **common)  # fmt: skip
    alloc, rs = res.allocation, res.sensitivity
    rules = alloc.rules()
    cfg = QuantConfig.from_dict(rules)  # what quantize/train will read: validated before writing
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg.save(out)
    print(alloc.table())
    how = "read from cache" if rs.cached else "measured"
    print(f"sensitivity: {rs.sensitivity.method} (dev-loss increase with one kernel quantized"
          f"{'; diagonal-Fisher estimate' if rs.sensitivity.method == 'fisher' else ''}), {rs.subset} dev utterances, "
          f"{how}: {rs.cache_path}")  # fmt: skip
    if budget is not None:
        print(f"file overhead {overhead} B: header and tokenizer of a trial export + {HEADER_SLACK} B slack")
    print(f"wrote {out}")
    if args.json_out:
        data = {
            "rules": rules, "choices": [vars(c) | {"allowed": list(c.allowed)} for c in alloc.choices],
            "kernel_bytes": alloc.kernel_bytes, "other_bytes": alloc.other_bytes,
            "overhead_bytes": alloc.overhead_bytes, "total_bytes": alloc.total_bytes,
            "budget_bytes": alloc.budget_bytes, "avg_bits": alloc.avg_bits, "avg_bits_budget": alloc.avg_bits_budget,
            "predicted_loss_increase": alloc.predicted_loss_increase, "sensitivity": rs.sensitivity.method,
            "cache": str(rs.cache_path), "cached": rs.cached,
        }  # fmt: skip
        Path(args.json_out).write_text(json.dumps(data, indent=2) + "\n")
    return 0
