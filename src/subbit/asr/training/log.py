"""``RUN/log.csv``: one row per step, appended as training goes, truncated to the checkpoint on resume."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import IO

LOG_FIELDS = ("step", "epoch", "loss", "lr", "tau", "grad_norm", "audio_sec_per_sec", "wall_time")


def truncate_log(path: Path, step: int) -> None:
    """Keep the header and the rows up to ``step`` (later rows will be redone); step 0 keeps the header.

    Done on every start: after a resume, and on a fresh start over a run killed before its first
    checkpoint (whose rows would otherwise be duplicated).
    """
    if not path.is_file():
        return
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return

    def step_of(row: list[str]) -> int:
        try:
            return int(row[0])
        except ValueError:  # a row cut short by a kill
            return step + 1

    keep = [rows[0]] + [r for r in rows[1:] if r and step_of(r) <= step]
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(keep)


def read_log(path: str | Path) -> list[dict[str, float]]:
    """RUN/log.csv as a list of dicts of floats (for tests and reports)."""
    with Path(path).open(newline="") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


class TrainLog:
    """The CSV writer of one session (rank 0 only; other ranks pass ``path=None``)."""

    def __init__(self, path: Path | None) -> None:
        self._fh: IO[str] | None = None
        self._writer = None
        if path is None:
            return
        new = not path.is_file() or path.stat().st_size == 0
        self._fh = path.open("a", newline="")
        self._writer = csv.writer(self._fh)
        if new:
            self._writer.writerow(LOG_FIELDS)

    def row(self, *, step: int, epoch: int, loss: float, lr: float, tau: float, grad_norm: float, speed: float,
            elapsed: float) -> None:  # fmt: skip
        if self._writer is None or self._fh is None:
            return
        self._writer.writerow([step, epoch, repr(loss), f"{lr:.6g}", f"{tau:.6g}", f"{grad_norm:.4g}",
                               f"{speed:.1f}", f"{elapsed:.2f}"])  # fmt: skip
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
