"""FID against training step, measured after training: snapshots during the run, the curve in the sample stage.

A training stage saves the weights every ``train.eval_every`` steps and at the end (``RUN/snapshots/NNNNNNN.pt``,
LlamaGen layout, no optimizer state) through the trainer's ``eval_fn`` hook, and needs nothing else. The stage that
samples the run afterwards turns the snapshots into the curve (``curve.json``): ``num`` class-balanced samples per
snapshot, through the refine model for coarse runs, FID and class match against the cached reference features.
Training therefore depends only on the codes and the prior, not on the classifier or the refine model: on a 2-core
machine the trainings start as soon as the codes exist, while the classifier and the refine models train beside
them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

SNAPSHOTS = "snapshots"


def snapshot_fn(run_dir: str | Path) -> Callable[[int, Any], dict]:
    """A trainer ``eval_fn`` that saves the model's weights as ``run_dir/snapshots/<step>.pt``."""
    from codeprior.models.checkpoint import save_gpt

    out = Path(run_dir) / SNAPSHOTS

    def save(step: int, model: Any) -> dict:
        save_gpt(model, out / f"{step:07d}.pt", steps=step)
        return {"snapshot": step}

    return save


def snapshots(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``[(step, path)]`` of a run's snapshots, by step."""
    d = Path(run_dir) / SNAPSHOTS
    found = [(int(p.stem), p) for p in d.glob("*.pt") if re.fullmatch(r"\d+", p.stem)] if d.is_dir() else []
    return sorted(found)


def make_fid_fn(spec: dict) -> Callable[..., dict]:
    """``fid(model, full=False) -> {"fid", "class_match"}``: sample ``spec["num"]`` class-balanced images with
    ``model`` (through ``spec["refine"]`` for coarse models), decode them on the ``spec["grid"]`` ``[h, w]`` code
    grid and compare their features with the reference features. ``full=True`` adds the Inception score
    (``is_mean``, ``is_std``; 10 splits) and precision / recall / density / coverage (``spec["nearest_k"]`` nearest
    neighbours, default 5, on at most ``spec["prdc_max"]`` features per side, default 5000). ``rule`` and ``passes``
    go to :func:`codeprior.sample.generate_codes` (a speculative decoder's acceptance rule; per-sample pass counts).

    ``spec`` is plain data: classifier or inception_weights, reference_features, vq (+ vq_config for a LlamaGen
    tokenizer), refine, num, batch_size, settings (:class:`codeprior.sample.SampleSettings` fields), grid, device.
    """
    import numpy as np
    import torch

    from codeprior.evaluate import make_extractor
    from codeprior.evaluate.metrics import (
        class_match_rate,
        fid_from_features,
        inception_score_from_logits,
        prdc_from_features,
    )
    from codeprior.models import load_refine
    from codeprior.sample import SampleSettings, balanced_labels, codes_to_uint8, generate_codes
    from codeprior.tokenize import load_tokenizer
    from codeprior.utils.io import load_checkpoint

    state: dict[str, Any] = {}

    def setup() -> None:
        if spec.get("inception_weights"):
            state["ext"] = make_extractor("inception", inception_weights=spec["inception_weights"])
        else:
            state["ext"] = make_extractor("classifier", classifier=spec["classifier"])
        state["ref"] = load_checkpoint(spec["reference_features"])["features"]
        dev = spec["device"]
        state["vq"] = load_tokenizer(spec["vq"], default_config=spec.get("vq_config"), device=dev)
        state["refine"] = load_refine(spec["refine"], device=dev) if spec.get("refine") else None

    def fid(model: Any, full: bool = False, rule: Any = None, passes: list | None = None) -> dict:
        if not state:
            setup()
        settings = SampleSettings(**spec["settings"])
        num, bs = int(spec["num"]), int(spec["batch_size"])
        labels = balanced_labels(num, model.config.num_classes)
        h, w = spec["grid"]
        dev = next(model.parameters()).device
        vq = state["vq"]
        imgs = []
        for b in range(0, num, bs):
            idx = torch.arange(b, min(num, b + bs))
            codes = generate_codes(
                model, labels[idx].to(dev), idx, settings, refine=state["refine"], rule=rule, passes=passes
            )
            with torch.no_grad():
                x = vq.decode_codes(codes.to(vq.quantize.embedding.weight.device).view(len(idx), h, w))
            imgs.append(codes_to_uint8(x))
        feats, logits = state["ext"].extract(np.concatenate(imgs))
        res = {
            "fid": float(fid_from_features(state["ref"], feats)),
            "class_match": float(class_match_rate(logits, labels)),
        }
        if full:
            res["is_mean"], res["is_std"] = inception_score_from_logits(logits, splits=10, seed=0)
            res.update(
                prdc_from_features(
                    state["ref"],
                    feats,
                    nearest_k=int(spec.get("nearest_k", spec.get("prdc_k", 5))),  # prdc_k: specs of earlier versions
                    max_samples=int(spec.get("prdc_max", 5000)),
                    seed=0,
                )
            )
        return res

    return fid


def fid_curve(
    spec: dict, run_dir: str | Path, device: str = "cpu", log: Callable[[str], None] | None = None
) -> dict[str, list]:
    """``{"step", "fid", "class_match"}`` over a run's snapshots (empty lists when it has none)."""
    from codeprior.models import load_gpt

    fid = make_fid_fn(spec)
    out: dict[str, list] = {"step": [], "fid": [], "class_match": []}
    for step, path in snapshots(run_dir):
        res = fid(load_gpt(path, device=device))
        out["step"].append(step)
        out["fid"].append(res["fid"])
        out["class_match"].append(res["class_match"])
        if log is not None:
            log(f"  step {step}: FID {res['fid']:.2f}, class match {res['class_match']:.3f}")
    return out
