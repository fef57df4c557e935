"""Weight-only bf16 / int8 sampling (``sample --weights``) against fp32 on the demo's token GPT: FID and class match
of each format over several sampling seeds (the pipeline's FID hook, in-project classifier features), the share of
sampled codes equal to fp32's under the same seeds, and the teacher-forced logit error on fp32's samples.

    .venv/bin/python -m benchmarks.weights_quality [--run-dir runs/demo] [--num 1000] [--seeds 0 1] [--threads 1]

Reads a finished demo run (``make demo``: tokenizer, codes, classifier, train-token); writes nothing there.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import ROOT, SMOKE_HELP, load_note, run_records, start_smoke, update_doc_section, write_result

FORMATS = ("fp32", "bf16", "int8")


def main() -> None:
    from benchmarks import convergence_runs as R
    from codeprior.curves import make_fid_fn
    from codeprior.data.codes import CodeShards
    from codeprior.decoding.weights import cast_weights
    from codeprior.models import load_gpt
    from codeprior.sample import SampleSettings, balanced_labels, generate_codes

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", default=str(ROOT / "runs" / "demo"), help="a finished demo run (default runs/demo)")
    ap.add_argument("--num", type=int, default=1000, help="samples per FID (default 1000, the demo's)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="sampling seeds (default 0 1)")
    ap.add_argument("--cfg-scale", type=float, default=3.0, help="CFG scale (default 3.0, the demo's)")
    ap.add_argument("--batch", type=int, default=250, help="samples per forward (default 250, the demo's)")
    ap.add_argument("--agree-num", type=int, default=200, help="samples for code agreement and logit error")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP + "; a 2-step GPT on random images")
    a = ap.parse_args()
    if a.smoke:  # FID of 10 samples, one seed, 4 samples for the agreement
        from benchmarks._smoke import tiny_run

        a.run_dir = str(tiny_run(start_smoke(), until=("classifier", "train-token")))
        a.num, a.seeds, a.batch, a.agree_num = 10, [0], 10, 4
    if a.threads:
        torch.set_num_threads(a.threads)
    run_dir = Path(a.run_dir)
    token = next((r for r in run_records(run_dir)["variants"].values() if r.objective == "token"), None)
    if token is None or not Path(token.checkpoint).is_file():
        raise SystemExit(f"{run_dir}: no finished token GPT stage (run make demo first)")
    ckpt = token.checkpoint
    inputs = R.prepare_base(run_dir, {}, "cpu", log=lambda _m: None)
    grid = CodeShards(inputs["codes"], "train", aug=0).manifest["grid"]
    models = {f: cast_weights(load_gpt(ckpt, device="cpu").eval(), f) for f in FORMATS}
    load_before = os.getloadavg()[0]

    # code agreement and teacher-forced logits against fp32, same seeds
    idx = torch.arange(a.agree_num)
    labels = balanced_labels(a.agree_num, models["fp32"].config.num_classes)
    st = SampleSettings(cfg_scale=a.cfg_scale, seed=a.seeds[0])
    codes = {f: generate_codes(m, labels, idx, st) for f, m in models.items()}
    agree: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        ref = models["fp32"](codes["fp32"], labels)
        for f in FORMATS:
            lg = models[f](codes["fp32"], labels)
            same = codes[f] == codes["fp32"]
            first = torch.where(same.all(1), same.shape[1], (~same).to(torch.uint8).argmax(1)).float()
            agree[f] = {
                "token_agreement": float(same.float().mean()),
                "identical_samples": float(same.all(1).float().mean()),
                "first_divergence_mean": float(first.mean()),
                "logit_max_abs_err": float((lg - ref).abs().max()),
                "logit_rms_err_rel": float((lg - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()),
                "argmax_agreement": float((lg.argmax(-1) == ref.argmax(-1)).float().mean()),
            }
            print(f"{f}: {agree[f]}", flush=True)

    # FID per format and seed (interleaved by seed)
    cells: list[dict[str, Any]] = []
    for seed in a.seeds:
        s = SampleSettings(cfg_scale=a.cfg_scale, seed=seed)
        spec = R.fid_spec(inputs, s, a.num, a.batch, "cpu", grid)
        fid = make_fid_fn(spec)
        for f in FORMATS:
            t0 = time.perf_counter()
            res = fid(models[f])
            cells.append({"format": f, "seed": seed, **res, "seconds": time.perf_counter() - t0})
            print(cells[-1], flush=True)
    load_after = os.getloadavg()[0]
    rows = []
    for f in FORMATS:
        fids = [c["fid"] for c in cells if c["format"] == f]
        cms = [c["class_match"] for c in cells if c["format"] == f]
        secs = [c["seconds"] for c in cells if c["format"] == f]
        rows.append(
            {
                "format": f,
                "fid_mean": statistics.mean(fids),
                "fid_sd": statistics.stdev(fids) if len(fids) > 1 else 0.0,
                "fids": fids,
                "class_match_mean": statistics.mean(cms),
                "seconds_median": statistics.median(secs),
                **agree[f],
            }
        )
    write_result(
        "weights_quality",
        {
            "run_dir": str(run_dir), "num": a.num, "seeds": a.seeds, "cfg_scale": a.cfg_scale,
            "threads": torch.get_num_threads(), "rows": rows, "cells": cells,
            "load_average_before": load_before, "load_average_after": load_after,
        },
    )  # fmt: skip
    if a.no_doc:
        return
    base = rows[0]
    table = "\n".join(
        f"| {r['format']} | {r['fid_mean']:.2f} ± {r['fid_sd']:.2f} ({', '.join(f'{x:.2f}' for x in r['fids'])}) | "
        f"{(r['fid_mean'] / base['fid_mean'] - 1) * 100:+.1f}% | {r['class_match_mean']:.3f} | "
        f"{r['token_agreement']:.3f} | {r['first_divergence_mean']:.1f} | {r['logit_rms_err_rel']:.1e} | "
        f"{r['argmax_agreement']:.4f} | {r['seconds_median']:.1f} s |"
        for r in rows
    )
    L = models["fp32"].config.block_size
    md = f"""## Weight-only bf16 / int8 sampling: quality against fp32

`python -m benchmarks.weights_quality --run-dir RUN --num {a.num} --seeds {" ".join(map(str, a.seeds))}
--cfg-scale {a.cfg_scale}` on the demo's token GPT (`make demo`'s `train-token`, {L} tokens per image; RUN = its run
folder); {torch.get_num_threads()} torch thread(s). FID and class match: {a.num} class-balanced samples per seed
through the pipeline's FID hook (in-project classifier features, as the demo's report). Agreement: {a.agree_num}
samples with the same per-sample generators as fp32: the share of tokens equal to fp32's, and the mean position of
the first token that differs ({L} = never); logit error: teacher-forced on fp32's samples, RMS error over RMS of the
fp32 logits, and the share of positions whose argmax agrees.

| weights | FID (mean ± sd over seeds) | FID vs fp32 | class match | tokens = fp32 | first difference at | logit RMS error | argmax = fp32 | time per FID |
|---|---|---|---|---|---|---|---|---|
{table}

A sampled token differs from fp32's as soon as a uniform falls between the two formats' CDFs, and every later
token of that sample then differs too (the prefix differs), so the agreement measures how early that happens, not
quality; FID is the quality figure, with fp32's spread over seeds as the noise. {load_note(load_before, load_after)}"""
    update_doc_section("weights_quality", md)


if __name__ == "__main__":
    main()
