"""Speculative Jacobi decoding vs plain AR decoding on a trained run: model passes, accepted tokens per pass,
wall-clock time (docs/sampling.md).

Loads the token GPT, the tokenizer and the priors of a demo run (``codeprior demo`` layout under ``--run-dir``) and
samples the same labels and seeds with AR decoding and with SJD under each acceptance rule (``prior`` once per
prior file found). Settings run interleaved (round-robin, ``--repeats`` rounds, median wall time) so they share
the machine load; ratios are against AR in the same run. ``--random`` uses random-init tiny models instead (a
smoke test of the script: acceptance on random weights says nothing about a trained model).

    .venv/bin/python benchmarks/speculative.py --run-dir runs/demo [--num 16] [--batch 16] [--window 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from _common import load_note, write_result

from codeprior.decoding import DecoderSettings
from codeprior.sample import SampleSettings, balanced_labels, decoder_rule, generate_codes


def load_run(run_dir: Path, device: torch.device) -> tuple[Any, Any, list[Path]]:
    """Token GPT, tokenizer and prior files of a demo run directory."""
    from codeprior.models import load_gpt, load_vq

    ckpt, tok = run_dir / "train-token" / "run" / "model.pt", run_dir / "tokenizer" / "train" / "tokenizer.pt"
    for p in (ckpt, tok):
        if not p.is_file():
            raise SystemExit(f"{p}: not found (train the demo first, or pass --random for a smoke test)")
    gpt = load_gpt(ckpt, device=device).eval()
    vq = load_vq(tok).to(device).eval()
    return gpt, vq, sorted((run_dir / "priors").glob("*.safetensors"))


def random_models(tmp: Path) -> tuple[Any, Any, list[Path]]:
    """Random-init GPT-tiny over a 7x7 grid and a VQ-fmnist codebook, with one random balanced prior."""
    from codeprior.models.gpt import GPT, get_gpt_config
    from codeprior.models.vq import VQModel, get_vq_config
    from codeprior.priors import Prior

    torch.manual_seed(0)
    vq = VQModel(get_vq_config("VQ-fmnist")).eval()
    V = vq.quantize.embedding.weight.shape[0]
    gpt = GPT(get_gpt_config("GPT-tiny", vocab_size=V, num_classes=10, grid=(7, 7))).eval()
    torch.nn.init.normal_(gpt.output.weight, std=0.05)
    tmp.mkdir(parents=True, exist_ok=True)
    Prior(torch.randperm(V) % max(V // 8, 1)).save(tmp / "random.safetensors")
    return gpt, vq, [tmp / "random.safetensors"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", default="runs/demo", help="demo run directory (default runs/demo)")
    ap.add_argument("--random", action="store_true", help="random-init tiny models (smoke test of the script)")
    ap.add_argument("--num", type=int, default=16, help="samples per setting (default 16)")
    ap.add_argument("--batch", type=int, default=16, help="samples per call (default 16)")
    ap.add_argument("--window", type=int, default=16, help="SJD window (default 16)")
    ap.add_argument("--init", default="random", choices=["random", "repeat"], help="draft initialisation")
    ap.add_argument("--accept", nargs="+", default=["exact", "gsd", "latent", "prior"], help="rules to measure")
    ap.add_argument("--cfg", type=float, default=2.0, help="CFG scale (default 2.0)")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds; the median is reported (default 3)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument(
        "--compile",
        action="store_true",
        help="also time SJD exact with --compile-decoding (compiled in "
        "the warm-up; the compile time is reported apart)",
    )
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    if a.random:
        import tempfile

        gpt, vq, priors = random_models(Path(tempfile.mkdtemp(prefix="speculative-")))
    else:
        gpt, vq, priors = load_run(Path(a.run_dir), device)
    L = gpt.config.block_size
    labels = balanced_labels(a.num, gpt.config.num_classes)
    base = dict(cfg_scale=a.cfg, temperature=a.temperature, top_k=a.top_k, seed=0)
    settings: dict[str, SampleSettings] = {"ar": SampleSettings(**base)}
    for rule in a.accept:
        for prior in priors if rule == "prior" else [None]:
            name = f"sjd-{rule}" + (f"-{prior.stem}" if prior else "")
            settings[name] = SampleSettings(
                **base,
                decoder=DecoderSettings("sjd", rule, window=a.window, init=a.init, prior=str(prior) if prior else None),
            )
    if a.compile:
        settings["sjd-exact-compiled"] = SampleSettings(
            **base, decoder=DecoderSettings("sjd", "exact", window=a.window, init=a.init, compile=True)
        )
    rules = {k: decoder_rule(s, gpt, vq) for k, s in settings.items()}

    def run(name: str) -> torch.Tensor:
        passes: list[torch.Tensor] = []
        for b in range(0, a.num, a.batch):
            idx = torch.arange(b, min(a.num, b + a.batch))
            generate_codes(gpt, labels[idx].to(device), idx, settings[name], rule=rules[name], passes=passes)
        return torch.cat(passes)

    warmup: dict[str, float] = {}
    for name in settings:  # warm-up (and compilation)
        t0 = time.perf_counter()
        run(name)
        warmup[name] = time.perf_counter() - t0
    load_before = os.getloadavg()[0]
    times: dict[str, list[float]] = {k: [] for k in settings}
    passes: dict[str, torch.Tensor] = {}
    for _ in range(a.repeats):
        for name in settings:
            t0 = time.perf_counter()
            passes[name] = run(name)
            times[name].append(time.perf_counter() - t0)
    load_after = os.getloadavg()[0]
    t_ar = statistics.median(times["ar"])
    rows = []
    for name in settings:
        t = statistics.median(times[name])
        per_sample = passes[name].double().mean().item()
        rows.append(
            {
                "setting": name,
                "wall_s": t,
                "times": times[name],
                "passes_per_sample": per_sample,
                "accepted_per_pass": L / per_sample,
                "step_reduction": L / per_sample,
                "speedup": t_ar / t,
            }
        )
    print(f"{'setting':28s} {'wall s':>8s} {'passes/sample':>14s} {'tokens/pass':>12s} {'speed-up':>9s}")
    for r in rows:
        print(
            f"{r['setting']:28s} {r['wall_s']:8.2f} {r['passes_per_sample']:14.1f} {r['accepted_per_pass']:12.2f} "
            f"{r['speedup']:8.2f}x"
        )
    if a.compile:
        print(f"compiled: first call (compilation) {warmup['sjd-exact-compiled']:.1f} s")
    print(load_note(load_before, load_after))
    if a.random:  # a smoke test: nothing to record
        return
    write_result(
        "speculative",
        {
            "run_dir": None if a.random else str(a.run_dir),
            "random_weights": a.random,
            "num": a.num,
            "batch": a.batch,
            "window": a.window,
            "init": a.init,
            "cfg_scale": a.cfg,
            "temperature": a.temperature,
            "top_k": a.top_k,
            "seq_len": L,
            "vocab": gpt.config.vocab_size,
            "threads": torch.get_num_threads(),
            "device": str(device),
            "rows": rows,
            "warmup_s": warmup,
            "load_average_before": load_before,
            "load_average_after": load_after,
        },
    )


if __name__ == "__main__":
    main()
