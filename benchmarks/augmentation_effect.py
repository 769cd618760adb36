"""What each augmentation buys on held-out voices: one RNN-T per effect, scored against a clean twin.

Every arm trains the same model with the same command, seed and step budget; only its training
audio differs. A corpus arm is the clean corpus rebuilt with ``--augment EFFECT`` (the same
``--augment-share`` of the same training utterances carries the effect, the sentences and voices
do not move); the ``train-augment`` arm is ``subbit train --augment`` (speed, noise, SpecAugment
on the fly) on the clean corpus. Every model is scored on the *clean corpus's* evaluation splits,
so the comparison is paired utterance by utterance: the interval is a paired bootstrap over
utterances (``subbit.experiments.stats``), pooled over seeds when there are several. With one
seed the interval does not cover seed-to-seed variation; say so when quoting it.

    python benchmarks/augmentation_effect.py --base data/full --steps 1500 --parallel 2 \
        --out benchmarks/out/augment --json benchmarks/results/augmentation_effect.json

The clean corpus's audio is hard-linked into each arm's folder first, so a rebuild synthesises
only the augmented utterances. Finished runs, evaluations and corpora are reused on a rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

EFFECTS = ("pitch", "vtlp", "reverb", "noise", "telephone")
TRAIN_AUGMENT = "train-augment"
SPLITS = ("test_heldout", "test_seen")


def _run(cmd: list[str], log: Path | None = None) -> None:
    print("+", " ".join(cmd), flush=True)
    if log is None:
        subprocess.run(cmd, check=True)
        return
    with log.open("a") as fh:
        subprocess.run(cmd, check=True, stdout=fh, stderr=subprocess.STDOUT)


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link every file of ``src`` under ``dst`` (a copy where links are refused)."""
    for root, _, files in os.walk(src):
        target = dst / Path(root).relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            d = target / name
            if not d.exists():
                try:
                    os.link(Path(root) / name, d)
                except OSError:
                    d.write_bytes((Path(root) / name).read_bytes())


def _train_rows(data: Path) -> list[tuple[str, str, str]]:
    rows = [json.loads(ln) for ln in (data / "train.jsonl").read_text().splitlines() if ln.strip()]
    return [(r["id"], r["text"], r.get("speaker", "")) for r in rows]


def build_arm_corpus(base: Path, out: Path, effect: str, share: float) -> Path:
    """The clean corpus rebuilt with one effect; refuses an arm whose sentences or voices moved."""
    opts = json.loads((base / "corpus.json").read_text())["options"]
    data = out / f"data-{effect}"
    if not (data / "corpus.json").is_file():
        _link_tree(base / "wav", data / "wav")
    cmd = ["subbit", "corpus", "build", "--out", str(data), "--seed", str(opts["seed"]),
           "--engines", ",".join(opts["engines"]), "--augment", effect, "--augment-share", str(share),
           "--no-progress"]
    cmd += ["--heldout-engine", opts.get("heldout_engine") or "none"]
    if opts["n_test"] <= 150:
        cmd += ["--quick"] + (["--open-split"] if opts.get("open_split") else [])
    if opts.get("wake_word_share"):
        cmd += ["--wake-word-share", str(opts["wake_word_share"])]
    _run(cmd)
    if _train_rows(data) != _train_rows(base):
        raise SystemExit(f"{data}: the training sentences or voices differ from {base}; the arms are not paired")
    return data


def train_and_score(arm: str, data: Path, base: Path, out: Path, seed: int, steps: int, threads: int) -> dict:
    from subbit.experiments.arms import run_scores

    run = out / f"run-{arm}-s{seed}"
    log = out / f"run-{arm}-s{seed}.log"
    if not (run / "final.pt").is_file():
        cmd = ["subbit", "train", "--model", "rnnt", "--preset", "small", "--data", str(data), "--steps", str(steps),
               "--seed", str(seed), "--out", str(run), "--threads", str(threads), "--no-progress"]
        cmd += ["--augment"] if arm == TRAIN_AUGMENT else ["--no-augment"]
        _run(cmd + (["--resume"] if (run / "checkpoints" / "last.pt").is_file() else []), log)
    scores = {}
    for split in SPLITS:
        errors = run / f"errors-{split}.jsonl"
        if not errors.is_file():
            _run(["subbit", "eval", str(run), "--data", str(base), "--split", split, "--errors", str(errors),
                  "--json", str(run / f"eval-{split}.json"), "--no-progress"], log)
        scores[split] = run_scores(run, split)
    return {"arm": arm, "seed": seed, "run": str(run), "scores": scores}


def summarise(results: list[dict], reference: str = "none") -> dict:
    """WER per arm and the paired interval of its difference from the clean arm, per split."""
    from subbit.experiments.arms import paired_table

    return paired_table(results, SPLITS, reference)


def plot(table: dict, path: Path) -> None:
    """Held-out WER change per arm with its interval: easier to read than the table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {a: r for a, r in table["test_heldout"].items() if "delta" in r}
    names = list(rows)
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(names) + 1.2))
    for i, a in enumerate(names):
        lo, hi = rows[a]["delta_ci"]
        ax.errorbar(100 * rows[a]["delta"], i, xerr=[[100 * (rows[a]["delta"] - lo)], [100 * (hi - rows[a]["delta"])]],
                    fmt="o", color="C3" if rows[a]["significant"] else "C0", capsize=4)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("held-out WER change vs clean training, points (95% paired CI)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="the clean corpus (subbit corpus build without --augment)")
    ap.add_argument("--out", default="benchmarks/out/augment")
    ap.add_argument("--effects", default=",".join(EFFECTS + (TRAIN_AUGMENT,)),
                    help=f"comma list from {','.join(EFFECTS)},{TRAIN_AUGMENT}")
    ap.add_argument("--share", type=float, default=0.3, help="--augment-share of each corpus arm")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="threads per training run")
    ap.add_argument("--parallel", type=int, default=1, help="runs at once")
    ap.add_argument("--json", default=None, help="write the result here too")
    args = ap.parse_args(argv)
    base, out = Path(args.base), Path(args.out)
    effects = [e for e in args.effects.split(",") if e]
    unknown = sorted(set(effects) - set(EFFECTS) - {TRAIN_AUGMENT})
    if unknown:
        ap.error(f"unknown effect(s) {unknown}")
    if not (base / "corpus.json").is_file():
        ap.error(f"{base} is not a corpus folder (no corpus.json)")
    if json.loads((base / "corpus.json").read_text())["options"].get("augment_share"):
        ap.error(f"{base} was built with --augment: the reference arm must be clean")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    corpora = {"none": base, TRAIN_AUGMENT: base}
    for e in effects:
        if e != TRAIN_AUGMENT:
            corpora[e] = build_arm_corpus(base, out, e, args.share)
    jobs = [(arm, s) for arm in ["none", *effects] for s in range(args.seeds)]
    with ThreadPoolExecutor(max(1, args.parallel)) as pool:
        results = list(pool.map(lambda j: train_and_score(j[0], corpora[j[0]], base, out, j[1], args.steps,
                                                          args.threads), jobs))
    table = summarise(results)
    from subbit.bench.record import provenance, write_record

    doc = {**provenance(__file__), "base": str(base),
           "share": args.share, "steps": args.steps, "seeds": args.seeds, "threads": args.threads,
           "wall_minutes": round((time.time() - t0) / 60, 1), "table": table}
    for path in filter(None, [out / "augmentation_effect.json", args.json and Path(args.json)]):
        write_record(path, doc)
    plot(table, out / "augmentation_effect.png")
    for split, rows in table.items():
        print(f"{split}:")
        for arm, r in rows.items():
            d = "" if "delta" not in r else (f"  delta {100 * r['delta']:+.2f} [{100 * r['delta_ci'][0]:+.2f}, "
                                             f"{100 * r['delta_ci'][1]:+.2f}]{' *' if r['significant'] else ''}")
            print(f"  {arm:14s} {100 * r['wer']:6.2f}%{d}")
    print("wrote", out / "augmentation_effect.json", "and", out / "augmentation_effect.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
