"""Does the late-anneal growth of GQ's latent-weight gradients hurt? (issue 12 item 7)

As ``tau`` falls the soft assignment's slope at the midpoints between centroids grows like
``1 / tau``, so the latent weights' gradient norm grows late in the anneal. A training loop that
clips the *global* gradient norm (``asr/training/loop.py``: ``clip_grad_norm_(all, 5.0)``) then
scales every other parameter's gradient down too. This measures, on a small teacher-student
regression (LSTM 32->64 + Linear, fp32 pre-training, then a GQ fine-tune with AdamW and the
default anneal 1 -> 1e-3 over 85% of the steps):

* ``global``: one clip over all parameters (what the loop does);
* ``split``: the latent weights clipped per tensor (``subbit.quant.clip_latent_grad_norm_``),
  then the global clip over everything else, so the latents cannot shrink the others' steps.

Reported per variant (mean over seeds): latent gradient norm early / late in the anneal, the
global clip factor late, the mean update size of the non-quantized parameters early / late, and
the dev loss of the converted (hard) model at the end.

    python benchmarks/latent_grad_growth.py [--bits 2] [--steps 300] [--seeds 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys

import torch
from torch import nn

from subbit.quant import GQScheduler, QuantConfig, clip_latent_grad_norm_, convert, prepare, quantized_tensors

CLIP = 5.0  # TrainConfig.grad_clip's default (--clip)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(32, 64, batch_first=True)
        self.norm = nn.LayerNorm(64)
        self.out = nn.Linear(64, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(self.lstm(x)[0]))


def data(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1000)  # one teacher for every seed and split
    teacher = Net()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 20, 32, generator=g)
    with torch.no_grad():
        y = teacher(x) + 0.05 * torch.randn(n, 20, 16, generator=g)
    return x, y


def pretrain(seed: int, train: tuple, steps: int) -> Net:
    torch.manual_seed(seed)
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x, y = train
    for i in range(steps):
        b = slice((i * 32) % len(x), (i * 32) % len(x) + 32)
        opt.zero_grad()
        nn.functional.mse_loss(model(x[b]), y[b]).backward()
        nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
    return model


def finetune(fp32: Net, variant: str, bits: int, steps: int, train: tuple, dev: tuple, clip: float) -> dict[str, float]:
    model = prepare(copy.deepcopy(fp32), QuantConfig.from_dict({"default": {"bits": bits}}))
    latents = [qt.latent for qt in quantized_tensors(model)]
    ids = {id(p) for p in latents}
    others = [p for p in model.parameters() if id(p) not in ids and p.requires_grad
              and not any(p is q for qt in quantized_tensors(model) for q in qt.quantizer.parameters())]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = GQScheduler(model, steps)
    x, y = train
    rec: list[tuple[float, float, float, float]] = []  # (latent grad norm, clip factor, other update, total norm)
    for i in range(steps):
        b = slice((i * 32) % len(x), (i * 32) % len(x) + 32)
        opt.zero_grad()
        nn.functional.mse_loss(model(x[b]), y[b]).backward()
        latent_norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in latents])))
        if variant == "split":
            clip_latent_grad_norm_(model, clip)
        total = float(nn.utils.clip_grad_norm_(model.parameters(), clip))
        before = [p.detach().clone() for p in others]
        opt.step()
        sched.step()
        upd = float(torch.linalg.vector_norm(torch.stack([(p.detach() - b0).norm() for p, b0 in zip(others, before)])))
        rec.append((latent_norm, min(1.0, clip / max(total, 1e-12)), upd, total))
    convert(model)
    with torch.no_grad():
        dev_loss = float(nn.functional.mse_loss(model(dev[0]), dev[1]))
    early, late = rec[: steps // 5], rec[int(0.7 * steps): int(0.85 * steps)]  # anneal ends at 85%
    mean = lambda rows, j: statistics.mean(r[j] for r in rows)  # noqa: E731
    return {"latent_grad_early": mean(early, 0), "latent_grad_late": mean(late, 0),
            "clip_factor_late": mean(late, 1), "other_update_early": mean(early, 2),
            "other_update_late": mean(late, 2), "total_norm_early": mean(early, 3),
            "total_norm_late": mean(late, 3), "dev_loss": dev_loss}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bits", type=int, default=2)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--pretrain", type=int, default=300)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--clip", type=float, default=CLIP, help="global gradient-norm clip (default 5.0)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    train, dev = data(1, 512), data(2, 256)
    rows: dict[str, list[dict[str, float]]] = {"global": [], "split": []}
    fp32_dev = []
    for seed in range(args.seeds):
        fp32 = pretrain(seed, train, args.pretrain)
        with torch.no_grad():
            fp32_dev.append(float(nn.functional.mse_loss(fp32(dev[0]), dev[1])))
        for variant in rows:
            rows[variant].append(finetune(fp32, variant, args.bits, args.steps, train, dev, args.clip))
    print(f"bits {args.bits}, clip {args.clip}, {args.steps} fine-tune steps, {args.seeds} seeds; fp32 dev loss "
          f"{statistics.mean(fp32_dev):.4f}")
    keys = list(rows["global"][0])
    print(f"{'variant':<8}" + "".join(f"{k[:17]:>18}" for k in keys))
    summary = {}
    for variant, rs in rows.items():
        summary[variant] = {k: statistics.mean(r[k] for r in rs) for k in keys}
        summary[variant]["dev_loss_per_seed"] = [r["dev_loss"] for r in rs]
        print(f"{variant:<8}" + "".join(f"{summary[variant][k]:>18.4g}" for k in keys))
    print(json.dumps({"args": vars(args), "fp32_dev": fp32_dev, "summary": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
