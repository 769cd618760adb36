"""Toy GQ run: quantize a small Embedding + 2-layer LSTM + Conv1d + Linear model to mixed bit
depths, fine-tune it 300 steps on a regression while the temperature anneals, convert, report.

    python examples/quant_toy.py              # the run (a few seconds)
    python examples/quant_toy.py --mu-sweep   # the measurement behind GQ's default mu
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from torch import nn
from tqdm import tqdm

from subbit.quant import GeneralQuantizer, GQScheduler, QuantConfig, convert, prepare, quantized_tensors, report

CONFIG = {
    "default": {"method": "gq", "bits": 4},
    "rules": {"lstm.weight_hh_l1": {"bits": 1}, "Embedding": {"bits": 8}, "re:head_.*": {"bits": 5}},
}


class ToyNet(nn.Module):
    """Tokens -> embedding -> 2-layer LSTM -> Conv1d over time -> per-frame scalar."""

    def __init__(self, vocab: int = 16, dim: int = 16, hidden: int = 32) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, hidden, num_layers=2, batch_first=True)
        self.conv = nn.Conv1d(hidden, hidden, 3, padding=1)
        self.head_out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.emb(x))
        h = torch.relu(self.conv(h.transpose(1, 2))).transpose(1, 2)
        return self.head_out(h).squeeze(-1)


def run(steps: int = 300, seed: int = 0, lr: float = 2e-3, progress: bool = True) -> dict:
    """Warm-start a student from an fp32 teacher, QAT it with GQ, convert; returns what happened.

    The loss is the student's squared error on the teacher's standardised outputs (0 = fp32)."""
    torch.manual_seed(seed)
    teacher = ToyNet()
    student = ToyNet()
    student.load_state_dict(teacher.state_dict())
    prepare(student, QuantConfig.from_dict(CONFIG))
    theta0 = {qt.name: qt.quantizer.centroids().detach().clone() for qt in quantized_tensors(student)}
    gen = torch.Generator().manual_seed(seed + 1)
    test_x = torch.randint(0, 16, (64, 12), generator=gen)
    with torch.no_grad():  # normalise the teacher's outputs so the loss reads as a fraction of variance
        ref = teacher(test_x)
        mean, std = ref.mean(), ref.std()

    def loss_on(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            y = (teacher(x) - mean) / std
        return ((model(x) - mean) / std - y).square().mean()

    opt = torch.optim.Adam(student.parameters(), lr)
    sched = GQScheduler(student, steps, tau_start=1.0, tau_end=1e-3, anneal="exp", anneal_end=0.85)
    start_loss = float(loss_on(student, test_x).detach())
    for _ in tqdm(range(steps), desc="GQ toy", disable=not progress):
        x = torch.randint(0, 16, (16, 12), generator=gen)
        opt.zero_grad()
        loss_on(student, x).backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        soft_out = student(test_x)
        soft_loss = float(loss_on(student, test_x))
    convert(student)
    with torch.no_grad():
        hard_out = student(test_x)
        hard_loss = float(loss_on(student, test_x))
    moved = {
        qt.name: float((qt.quantizer.centroids().detach() - theta0[qt.name]).abs().max())
        for qt in quantized_tensors(student)
    }
    distinct = {
        qt.name: (int(getattr(qt.module, qt.param_name).unique().numel()), qt.quantizer.bits)
        for qt in quantized_tensors(student)
    }
    return {
        "model": student, "report": report(student), "start_loss": start_loss, "soft_loss": soft_loss,
        "hard_loss": hard_loss, "soft_hard_max_diff": float((soft_out - hard_out).abs().max()),
        "centroid_shift": moved, "distinct": distinct,
    }


def mu_sweep(steps: int = 300, n: int = 4096, seeds: tuple[int, ...] = (0, 1)) -> dict:
    """RMSE / std of converted weights after GQ fits them (loss: MSE to the fp32 weights)."""
    table: dict = {}
    mus = (0.0, 1.0, 5.0, 10.0, 50.0, 255.0)
    cells = [(dist, bits, mu) for dist in ("gauss", "laplace") for bits in (2, 4, 5) for mu in mus]
    for dist, bits, mu in tqdm(cells, desc="mu sweep"):
        errs = []
        for seed in seeds:
            g = torch.Generator().manual_seed(seed)
            if dist == "gauss":
                w0 = torch.randn(n, generator=g)
            else:  # Laplace: random sign times an exponential
                w0 = torch.sign(torch.randn(n, generator=g)) * -torch.log(torch.rand(n, generator=g))
            w = nn.Parameter(w0.clone().reshape(64, -1))
            q = GeneralQuantizer(w.detach(), bits, mu=mu)
            opt = torch.optim.Adam([w, *q.parameters()], 1e-2)
            for t in range(steps):
                q.set_tau(1e-3 ** min(1.0, t / (0.85 * steps)))
                opt.zero_grad()
                (q(w) - w0.reshape(w.shape)).square().mean().backward()
                opt.step()
                q.constrain_()
            errs.append(float((q.hard(w.detach()) - w0.reshape(w.shape)).square().mean().sqrt() / w0.std()))
        table.setdefault(f"{dist} {bits}b", {})[mu] = sum(errs) / len(errs)
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mu-sweep", action="store_true", help="measure RMSE of converted weights for several mu")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.mu_sweep:
        table = mu_sweep(args.steps)
        mus = list(next(iter(table.values())))
        print("| weights | " + " | ".join(f"mu={m:g}" for m in mus) + " |")
        print("|---" * (len(mus) + 1) + "|")
        for row, vals in table.items():
            best = min(vals.values())
            print(f"| {row} | " + " | ".join(("**%.4f**" if v == best else "%.4f") % v for v in vals.values()) + " |")
        return 0
    out = run(args.steps, args.seed)
    print(out["report"])
    summary = {k: out[k] for k in ("start_loss", "soft_loss", "hard_loss", "soft_hard_max_diff", "centroid_shift")}
    print(json.dumps(summary, indent=2))
    bad = [n for n, (d, b) in out["distinct"].items() if d > 2**b]
    if bad:
        print(f"too many distinct values in {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
