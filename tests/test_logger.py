"""metrics.csv's columns come from the objectives' loss parts (the traits registry), the built-ins' as before."""

from __future__ import annotations

import csv
from types import SimpleNamespace

from codeprior.train import objective_traits as ot
from codeprior.train.logger import CSV_COLUMNS, RunLogger, csv_columns

#: the columns every run has written (the report, the pipeline's curves and benchmarks read them by name)
BEFORE = (
    "step",
    "epoch",
    "samples",
    "loss",
    "token_loss",
    "cluster_loss",
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


def _rows(path):
    with open(path, newline="") as f:
        r = csv.DictReader(f)
        return r.fieldnames, list(r)


def test_builtin_objectives_keep_their_columns():
    assert CSV_COLUMNS == BEFORE
    for name in ot.all_objectives():
        assert csv_columns(ot.TRAITS[name].loss_parts) == BEFORE, name


def test_a_new_objectives_loss_part_is_a_column(tmp_path):
    cfg = SimpleNamespace(tensorboard=False, wandb=None)
    info = SimpleNamespace(is_main=True)
    ot.register_traits(ot.ObjectiveTraits("toy-log", needs_prior=False, loss_parts=("token_loss", "toy_loss")))
    try:
        cols = csv_columns(("token_loss", "toy_loss"))
        assert cols == (*BEFORE[:6], "toy_loss", *BEFORE[6:])
        assert csv_columns() == cols  # every run's header names it while it is registered: runs line up
        log = RunLogger(cfg, tmp_path, None, info, loss_parts=("token_loss", "toy_loss"))
        log.log(1, {"loss": 2.0, "token_loss": 1.5, "toy_loss": 0.5, "not_a_column": 9})
        log.log(2, {"loss": 1.0, "token_loss": 0.75, "toy_loss": 0.25})
        log.close()
        names, rows = _rows(tmp_path / "metrics.csv")
        assert tuple(names) == cols
        assert [r["toy_loss"] for r in rows] == ["0.5", "0.25"] and "not_a_column" not in rows[0]
        # resumed at step 1: the header stays, the later row goes
        RunLogger(cfg, tmp_path, 1, info, loss_parts=("token_loss", "toy_loss")).close()
        names, rows = _rows(tmp_path / "metrics.csv")
        assert tuple(names) == cols and [r["step"] for r in rows] == ["1"]
    finally:
        ot.unregister_traits("toy-log")
    assert csv_columns() == BEFORE
    # an objective outside the registry still gets its own terms' columns
    assert csv_columns(("x_loss",)) == (*BEFORE[:6], "x_loss", *BEFORE[6:])
