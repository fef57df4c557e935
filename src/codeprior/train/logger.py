"""Where the trainer's numbers go: ``RUN/metrics.csv`` (one row per logged step, :func:`csv_columns`: the loss
terms' columns come from the objective registry),
``RUN/eval.jsonl`` (eval callback results), TensorBoard (``RUN/tb``; when the ``tensorboard`` extra is installed) and
optionally Weights & Biases; rank 0 only.

A full or failing disk under any of them is one line naming the file (:func:`codeprior.utils.io.disk_errors`);
TensorBoard's writer thread, which re-raises its error on the next write, does not also print a traceback."""

from __future__ import annotations

import contextlib
import csv
import json
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from codeprior.errors import CodepriorError
from codeprior.train.objective_traits import loss_parts as registered_loss_parts
from codeprior.utils.extras import EXTRAS, missing_modules
from codeprior.utils.io import atomic_path, disk_errors

__all__ = ["CSV_COLUMNS", "csv_columns", "RunLogger"]

#: metrics.csv's columns before and after the loss terms: step, progress and loss; accuracies, rates, validation
_HEAD = ("step", "epoch", "samples", "loss")
_TAIL = (
    "token_acc",
    "cluster_acc",
    "grad_norm",
    "lr",
    "tokens_per_s",
    "val_loss",
    "val_token_loss",
    "val_token_acc",
    "val_cluster_acc",
    "time",
)


def csv_columns(loss_parts: Iterable[str] = ()) -> tuple[str, ...]:
    """metrics.csv's columns for a run whose objective logs ``loss_parts`` (``Objective.loss_parts``): one column per
    loss term that any registered objective logs (:func:`codeprior.train.objective_traits.loss_parts`, so runs of
    different objectives share a header and the report compares them column by column), then the objective's own
    terms that are not registered, between the step / loss columns and the accuracy / rate / validation ones."""
    parts = dict.fromkeys((*registered_loss_parts(), *loss_parts))
    return (*_HEAD, *parts, *_TAIL)


#: the columns of the built-in objectives' runs (the registry at import)
CSV_COLUMNS = csv_columns()


class RunLogger:
    """Rank-0 sinks: CSV (metrics.csv), TensorBoard, wandb; on resume the rows after the checkpoint are dropped.

    ``loss_parts``: the loss terms of the run's objective (its metrics.csv columns, :func:`csv_columns`)."""

    def __init__(self, cfg: Any, run: Path, resume_step: int | None, info: Any, loss_parts: Iterable[str] = ()) -> None:
        self.on = info.is_main
        self.csv_path = run / "metrics.csv"
        self.columns = csv_columns(loss_parts)
        self.tb = self.wb = None
        if not self.on:
            return
        rows: list[dict[str, str]] = []
        if resume_step is not None and self.csv_path.is_file():
            with open(self.csv_path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("step") and int(r["step"]) <= resume_step]
        # rewritten through a temp file: a full disk while resuming must not cost the rows before the checkpoint
        with atomic_path(self.csv_path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        self._trim_eval(run / "eval.jsonl", resume_step)
        self.tb_dir = run / "tb"
        if cfg.tensorboard and missing_modules(EXTRAS["tensorboard"]):
            # TensorBoard is an extra (the core install trains without it): say so once, keep metrics.csv.
            print(
                f"train: no TensorBoard events in {self.tb_dir}: tensorboard is not installed "
                "(pip install 'codeprior[tensorboard]'; --no-tensorboard silences this); metrics go to metrics.csv",
                file=sys.stderr,
            )
        elif cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            _quiet_tensorboard_threads()
            with disk_errors(self.tb_dir):
                self.tb = SummaryWriter(
                    str(self.tb_dir), purge_step=resume_step + 1 if resume_step is not None else None
                )
        if cfg.wandb:
            try:
                import wandb
            except ImportError:
                raise CodepriorError("--wandb: the wandb package is not installed (pip install wandb)") from None
            self.wb = wandb.init(project=cfg.wandb, name=run.name, config=cfg.to_dict(), dir=str(run), resume="allow")

    @staticmethod
    def _trim_eval(path: Path, resume_step: int | None) -> None:
        """Keep the eval results up to the resumed step (all of them go on a fresh run), like metrics.csv, so a
        resumed run does not list the evaluations after its checkpoint twice."""
        if not path.is_file():
            return
        keep: list[str] = []
        if resume_step is not None:
            for line in path.read_text().splitlines():
                try:
                    step = int(json.loads(line)["step"])
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line from a killed run
                if step <= resume_step:
                    keep.append(line + "\n")
        with atomic_path(path) as tmp:
            tmp.write_text("".join(keep))

    def log(self, step: int, row: dict[str, Any]) -> None:
        if not self.on:
            return
        with disk_errors(self.csv_path), open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore").writerow({"step": step, **row})
        scalars = {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and k not in ("step",)}
        if self.tb is not None:
            with disk_errors(self.tb_dir):
                for k, v in scalars.items():
                    self.tb.add_scalar(k.replace("val_", "val/") if k.startswith("val_") else f"train/{k}", v, step)
        if self.wb is not None:
            self.wb.log(scalars, step=step)

    def log_eval(self, step: int, res: dict[str, Any], run: Path) -> None:
        if not self.on:
            return
        with disk_errors(run / "eval.jsonl"), open(run / "eval.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **res}, default=float) + "\n")
        nums = {k: float(v) for k, v in res.items() if isinstance(v, (int, float))}
        if self.tb is not None:
            with disk_errors(self.tb_dir):
                for k, v in nums.items():
                    self.tb.add_scalar(f"eval/{k}", v, step)
        if self.wb is not None:
            self.wb.log({f"eval/{k}": v for k, v in nums.items()}, step=step)

    def close(self) -> None:
        if self.tb is not None:
            tb, self.tb = self.tb, None
            with disk_errors(self.tb_dir):
                tb.close()
        if self.wb is not None:
            self.wb.finish()

    def abandon(self) -> None:
        """Close after a failure: TensorBoard's pending events are dropped quietly (its error, if any, is the
        disk's, already reported)."""
        if self.tb is not None:
            tb, self.tb = self.tb, None
            with contextlib.suppress(Exception):  # the run already failed with its own error
                tb.close()


def _quiet_tensorboard_threads() -> None:
    """TensorBoard's event writer thread stores its write error, re-raises it on the next write in the main thread
    (where :func:`disk_errors` makes it one line), and then dies with it: keep that death from printing a second,
    thread traceback."""
    previous = threading.excepthook
    if getattr(previous, "_codeprior_tb", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if type(args.thread).__name__ == "_AsyncWriterThread" and isinstance(args.exc_value, OSError):
            return
        previous(args)

    hook._codeprior_tb = True  # type: ignore[attr-defined]
    threading.excepthook = hook
