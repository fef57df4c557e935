"""Speculative Jacobi decoding vs plain AR decoding on a demo run's trained models: model passes, wall-clock at
several batch sizes, and sample quality against AR (docs/sampling.md, docs/benchmarks.md).

Loads the token GPT, the tokenizer and the priors of a demo run (``codeprior demo`` layout under ``--run-dir``) and
samples the same labels and seeds with AR decoding and with SJD under each acceptance rule (``prior`` once per
prior file found). Two parts, each optional:

* **timing** (``--batches``, default 1 16 100): at each batch size the settings run interleaved (round-robin, each round starting one setting later,
  ``--repeats`` rounds, median wall time) on ``max(batch, --num)`` samples, so they share the machine load;
  every ratio is against AR at the same batch in the same run.
* **quality** (``--quality-num`` samples x ``--seeds``, default 2000 x 3): FID, precision, recall, density,
  coverage and class match of each setting's samples (the pipeline's FID hook, in-project classifier features),
  mean ± sd over the sampling seeds, FID and passes as ratios of AR's, a frontier plot (FID against passes) and a
  verdict. ``--models`` picks the models: ``token`` (the token GPT, every rule) and/or ``coarse`` (the run's
  coarse-to-fine models with AR, ``exact`` and ``gsd``: the rules a cluster-id vocabulary allows). Each (model,
  setting, seed) cell is saved under ``--out`` as it finishes: rerunning the same command resumes.

``--name`` names the result (``benchmarks/results/NAME.json``, the ``NAME`` section of docs/benchmarks.md and
docs/sampling.md, ``docs/img/NAME_frontier.png``): one name per run directory. ``--merge`` keeps what the named
result already holds that this run does not measure: the other part, and under quality the cells of the other
models (so ``--models coarse --merge`` adds the coarse rows to the token rows).

``--random`` uses random-init models instead, timing only: ``tiny`` (the demo's shapes: a smoke test) or ``gpt-b``
(LlamaGen's GPT-B over VQ-16's 16x16 codes and 16384-code vocabulary: the GPU speed check). Acceptance on random
weights says nothing about a trained model; a random run writes a result only under its own ``--name``.

Examples::

    .venv/bin/python -m benchmarks.speculative --run-dir runs/demo --threads 2                 # everything
    .venv/bin/python -m benchmarks.speculative --no-quality --batches 100 --num 100            # timing only
    .venv/bin/python -m benchmarks.speculative --no-timing --quality-num 200 --seeds 0 --no-doc # quick quality look
    .venv/bin/python -m benchmarks.speculative --random --no-quality --batches 4 --num 8       # smoke test
    .venv/bin/python -m benchmarks.speculative --run-dir runs/demo --no-timing --models coarse --merge   # add coarse
    .venv/bin/python -m benchmarks.speculative --run-dir runs/grid14 --out runs/speculative-grid14 \
        --name speculative-grid14 --batches 1 16 --quality-num 500                        # the 14x14 grid
    .venv/bin/python -m benchmarks.speculative --random gpt-b --device cuda --no-quality --compile \
        --batches 1 16 100 --num 100 --name speculative-gpu                              # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import speculative_quality as Q
from benchmarks._common import (
    DOC,
    ROOT,
    SMOKE_HELP,
    load_note,
    machine,
    run_records,
    smoke_dir,
    start_smoke,
    update_doc_section,
    write_result,
)
from codeprior.decoding import ACCEPT_RULES, DRAFT_INITS, DecoderSettings
from codeprior.sample import SampleSettings, balanced_labels, decoder_rule, generate_codes

SAMPLING_DOC = ROOT / "docs" / "sampling.md"


def frontier_image(name: str) -> Path:
    return (smoke_dir() or ROOT / "docs") / "img" / f"{name}_frontier.png"


def load_run(run_dir: Path, device: torch.device, coarse: bool) -> dict[str, Any]:
    """Token GPT, tokenizer, prior files and (``coarse``) the coarse GPTs with their refine models of a demo run,
    found through its stage records (:func:`benchmarks._common.run_records`)."""
    from codeprior.models import load_gpt, load_vq

    rec = run_records(run_dir)
    token = next((r for r in rec["variants"].values() if r.objective == "token"), None)
    for what, found in (("a finished token GPT stage", token), ("a finished tokenizer stage", rec["tokenizer"])):
        if found is None:
            raise SystemExit(f"{run_dir}: no {what} (train the demo first, or pass --random for a smoke test)")
    assert token is not None and rec["tokenizer"] is not None
    run: dict[str, Any] = {
        "gpt": load_gpt(token.checkpoint, device=device).eval(),
        "vq": load_vq(rec["tokenizer"].checkpoint).to(device).eval(),
        "priors": sorted(rec["priors"].files.values()) if rec["priors"] else [],
        "coarse": {},
    }
    if coarse:
        for name, r in sorted(rec["variants"].items()):
            if r.objective != "coarse" or r.prior is None:
                continue
            if r.prior not in rec["refines"]:
                raise SystemExit(f"{run_dir}: coarse model {name} has no refine model (prior {r.prior})")
            run["coarse"][f"coarse-{r.prior}"] = {
                "gpt": load_gpt(r.checkpoint, device=device).eval(),
                "refine": rec["refines"][r.prior].checkpoint,
            }
    return run


# --random presets: (GPT config, VQ config whose codebook the latent rule reads, grid side, classes)
RANDOM_PRESETS: dict[str, tuple[str, str, int, int]] = {
    "tiny": ("GPT-tiny", "VQ-fmnist", 7, 10),  # the demo's shapes: a CPU smoke test
    "gpt-b": ("GPT-B", "VQ-16", 16, 1000),  # LlamaGen's GPT-B over VQ-16 at 256 px: 256 codes, vocabulary 16384
}


def random_models(tmp: Path, preset: str = "tiny", device: str | torch.device = "cpu") -> dict[str, Any]:
    """Random-init GPT and VQ codebook of a :data:`RANDOM_PRESETS` entry, with one random prior (8 codes per
    cluster on average). For speed only: acceptance on random weights says nothing about a trained model."""
    from codeprior.models.gpt import GPT, get_gpt_config
    from codeprior.models.vq import VQModel, get_vq_config
    from codeprior.priors import Prior

    gpt_name, vq_name, side, classes = RANDOM_PRESETS[preset]
    torch.manual_seed(0)
    vq = VQModel(get_vq_config(vq_name)).eval().to(device)
    nv = vq.quantize.embedding.weight.shape[0]
    gpt = GPT(get_gpt_config(gpt_name, vocab_size=nv, num_classes=classes, grid=(side, side))).eval()
    torch.nn.init.normal_(gpt.output.weight, std=0.05)
    tmp.mkdir(parents=True, exist_ok=True)
    Prior(torch.randperm(nv) % max(nv // 8, 1)).save(tmp / "random.safetensors")
    return {"gpt": gpt.to(device), "vq": vq, "priors": [tmp / "random.safetensors"], "coarse": {}}


def build_settings(a: argparse.Namespace, priors: list[Path], rules: list[str]) -> dict[str, SampleSettings]:
    """AR plus one SJD setting per acceptance rule (``prior``: one per prior file), same sampling arguments."""
    base = dict(cfg_scale=a.cfg, temperature=a.temperature, coarse_temperature=a.temperature, top_k=a.top_k, seed=0)
    settings: dict[str, SampleSettings] = {"ar": SampleSettings(**base)}
    for rule in rules:
        for prior in priors if rule == "prior" else [None]:
            name = f"sjd-{rule}" + (f"-{prior.stem}" if prior else "")
            dec = DecoderSettings("sjd", rule, window=a.window, draft_init=a.init, prior=str(prior) if prior else None)
            settings[name] = SampleSettings(**base, decoder=dec)
    return settings


def timing(
    a: argparse.Namespace, gpt: Any, settings: dict[str, SampleSettings], rules: dict[str, Any], batch: int
) -> dict[str, Any]:
    """Median wall time per setting at one batch size (interleaved rounds), ratios against AR."""
    device = next(gpt.parameters()).device
    num = max(batch, a.num)
    labels = balanced_labels(num, gpt.config.num_classes)

    used: dict[str, dict[int, int]] = {}

    def run(name: str) -> torch.Tensor:
        passes: list[torch.Tensor] = []
        used[name] = {}
        for b in range(0, num, batch):
            idx = torch.arange(b, min(num, b + batch))
            generate_codes(
                gpt, labels[idx].to(device), idx, settings[name], rule=rules[name], passes=passes, windows=used[name]
            )
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the clock stops when the GPU has finished, not when it was asked
        return torch.cat(passes)

    warmup: dict[str, float] = {}
    for name in settings:  # warm-up (compilation; --window auto: the pass costs, measured or read from the cache)
        t0 = time.perf_counter()
        run(name)
        warmup[name] = time.perf_counter() - t0
    load_before = os.getloadavg()[0]
    times: dict[str, list[float]] = {k: [] for k in settings}
    passes: dict[str, torch.Tensor] = {}
    names = list(settings)
    for rnd in range(a.repeats):  # each round starts one setting later: no setting always runs first
        for name in names[rnd % len(names) :] + names[: rnd % len(names)]:
            t0 = time.perf_counter()
            passes[name] = run(name)
            times[name].append(time.perf_counter() - t0)
    load_after = os.getloadavg()[0]
    t_ar = statistics.median(times["ar"])
    L = gpt.config.block_size
    rows = []
    for name in settings:
        t = statistics.median(times[name])
        per_sample = passes[name].double().mean().item()
        rows.append(
            {
                "setting": name,
                "wall_s": t,
                "ms_per_sample": 1000 * t / num,
                "times": times[name],
                "passes_per_sample": per_sample,
                "accepted_per_pass": L / per_sample,
                "speedup": t_ar / t,
                "windows": {str(w): k for w, k in sorted(used[name].items()) if w},  # sample-passes per window
                "ar_samples": used[name].get(0, 0),  # samples --window auto decoded by plain AR
            }
        )
    print(f"batch {batch} ({num} samples)")
    print(f"  {'setting':26s} {'ms/sample':>10s} {'passes/sample':>14s} {'tokens/pass':>12s} {'speed-up':>9s}  windows")
    for r in rows:
        print(
            f"  {r['setting']:26s} {r['ms_per_sample']:10.1f} {r['passes_per_sample']:14.1f} "
            f"{r['accepted_per_pass']:12.2f} {r['speedup']:8.2f}x  {windows_used(r)}"
        )
    return {
        "batch": batch,
        "num": num,
        "rows": rows,
        "warmup_s": warmup,
        "load_average_before": load_before,
        "load_average_after": load_after,
    }


def windows_used(row: dict[str, Any]) -> str:
    """The windows a timing row used: 'AR' (plain AR decoding), or 'W a% / W b% ...' by share of sample-passes."""
    if row["setting"] == "ar":
        return "-"
    w = {int(k): v for k, v in (row.get("windows") or {}).items()}
    total = sum(w.values())
    if not total:
        return "?"
    if row.get("ar_samples") and set(w) == {1}:
        return "AR"
    top = sorted(w.items(), key=lambda kv: -kv[1])[:3]
    parts = [f"{k}: {100 * v / total:.0f}%" for k, v in top if 100 * v / total >= 1]
    ar = f", AR {row['ar_samples']} samples" if row.get("ar_samples") else ""
    return " / ".join(parts) + ar


def quality_models(
    a: argparse.Namespace, run: dict[str, Any], settings: dict[str, SampleSettings], rules: dict[str, Any], device: str
) -> dict[str, dict[str, Any]]:
    """The quality part's models (``--models``): the token GPT with every setting, each coarse GPT with AR / exact /
    gsd."""
    from benchmarks import convergence_runs as R
    from codeprior.data.codes import CodeShards
    from codeprior.pipeline import read_stage_manifest

    run_dir = Path(a.run_dir)
    for stage in ("tokenizer", "tokenize", "classifier"):
        m = read_stage_manifest(run_dir / stage)
        if not m or m.get("status") != "done":
            raise SystemExit(f"{run_dir / stage}: the demo's {stage} stage has not finished (run make demo)")
    inputs = R.prepare_base(run_dir, {}, device, log=lambda _m: None)
    grid = CodeShards(inputs["codes"], "train", aug=0).manifest["grid"]
    spec = R.fid_spec(inputs, settings["ar"], a.quality_num, a.quality_batch, device, grid)
    models = {}
    if "token" in a.models:
        models["token"] = {"gpt": run["gpt"], "spec": spec, "settings": settings, "rules": rules}
    if "coarse" in a.models and not run["coarse"]:
        raise SystemExit(f"{run_dir}: no finished coarse model (train-coarse-<prior> with its refine model)")
    for name, c in run["coarse"].items():
        cs = {  # coarse models sample cluster ids: only the rules that do not read codes apply
            k: s
            for k, s in settings.items()
            if s.decoder.accept is None or not ACCEPT_RULES[s.decoder.accept].codes_only or k == "ar"
        }
        models[name] = {
            "gpt": c["gpt"],
            "spec": {**spec, "refine": str(c["refine"])},
            "settings": cs,
            "rules": {k: decoder_rule(s, c["gpt"], run["vq"], coarse=True) for k, s in cs.items()},
        }
    return models


def prior_info(paths: list[Path], vq: Any) -> dict[str, dict[str, Any]]:
    from codeprior.priors import load_prior

    cb = vq.quantize.embedding.weight.detach().cpu()
    return {p.stem: {"k": load_prior(p, cb).k, "path": str(p)} for p in paths}


def markdown(res: dict[str, Any], cmd: str) -> str:
    """The result's section of docs/benchmarks.md (and the measured table of docs/sampling.md)."""
    priors = res.get("priors", {})
    name = res.get("benchmark", "speculative")
    lines = [
        "## Speculative Jacobi decoding: passes, wall-clock, quality (`benchmarks/speculative.py`"
        + ("" if name == "speculative" else f", `{name}`")
        + ")",
        "",
        f"Machine: {res['machine']}"
        + (f"; device {res['device']}" if res.get("device", "cpu") != "cpu" else "")
        + ". "
        + (
            f"Models: **random weights** ({res['random_model']}, {res['params'] / 1e6:.0f}M parameters, "
            f"{res['seq_len']} codes per image, vocabulary {res['vocab']}): for speed only, acceptance on random "
            "weights says nothing about a trained model"
            if res.get("random_weights")
            else f"Run: `{res['run_dir']}` (its trained models, {res['seq_len']} codes per image, vocabulary "
            f"{res['vocab']})"
        )
        + f"; window {res['window']}, {res['init']} drafts, CFG {res['cfg_scale']}, temperature {res['temperature']}. "
        "Commands (one per part, with its threads and date):",
        "",
    ]
    for part, info in (
        res.get("parts") or {"all": {"command": cmd, "threads": res["threads"], "date": res["date"]}}
    ).items():
        where = f", {info['machine']}" if info.get("machine") and info["machine"] != res["machine"] else ""
        threads = f"{info['threads']} thread" + ("s" if info["threads"] != 1 else "")
        lines += [f"    {info['command']}    # {part}: {threads}, {info['date']}{where}"]
    lines += [""]
    if res.get("timing"):
        lines += [
            "**Wall-clock** (median of interleaved rounds; speed-up = AR's time / the setting's, same batch, "
            "same run; with `--window auto` each cell says the windows used, as shares of the sample-passes, "
            "and AR where the whole batch fell back to plain AR decoding):",
            "",
            f"| decoder | passes per sample (batch {res['timing'][0]['batch']} run) | "
            + " | ".join(f"batch {t['batch']}" for t in res["timing"])
            + " |",
            "|---|---|" + "---|" * len(res["timing"]),
        ]
        for i, r0 in enumerate(res["timing"][0]["rows"]):
            cells = [
                f"{t['rows'][i]['ms_per_sample']:.1f} ms ({t['rows'][i]['speedup']:.2f}x"
                + (f"; {windows_used(t['rows'][i])})" if "windows" in t["rows"][i] and i else ")")
                for t in res["timing"]
            ]
            lines.append(
                f"| {Q.label(r0['setting'], priors)} | {r0['passes_per_sample']:.1f} | " + " | ".join(cells) + " |"
            )
        t0 = res["timing"][0]
        lines += ["", load_note(t0.get("load_average_before"), res["timing"][-1].get("load_average_after")), ""]
    if not res.get("quality"):
        lines += ["**Quality**: not measured in this run (`--no-quality`).", ""]
    else:
        q = res["quality"]
        lines += [
            f"**Quality** ({q['num']} class-balanced samples per seed, sampling seeds {q['seeds']}, mean ± sd over "
            "seeds; FID / precision / recall / class match on the **in-project classifier's features**, not "
            "Inception; 'in spread' = FID differs from AR's by at most twice the standard error):",
            "",
            Q.quality_table(q["rows"], priors),
            f"![speed-quality frontier](img/{frontier_image(name).name})",
            "",
            "**Verdict** (computed from the table):",
            "",
            *[f"- {s}" for s in q["verdict"]],
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", default="runs/demo", help="demo run directory (default runs/demo)")
    ap.add_argument("--out", default="runs/speculative", help="folder of the quality cells (default runs/speculative)")
    ap.add_argument(
        "--random",
        nargs="?",
        const="tiny",
        choices=sorted(RANDOM_PRESETS),
        help="random-init models instead of a run's, timing only: tiny (the demo's shapes, a smoke test; the "
        "default when given bare) or gpt-b (LlamaGen's GPT-B over VQ-16's 256 codes, for a GPU)",
    )
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 100], help="timing batch sizes (1 16 100)")
    ap.add_argument("--num", type=int, default=16, help="timing: at least this many samples per batch size (16)")
    ap.add_argument(
        "--window",
        type=lambda v: v if v == "auto" else int(v),
        default="auto",
        help="SJD window: auto (default: cost-aware, docs/sampling.md) or a number",
    )
    ap.add_argument("--init", default="random", choices=DRAFT_INITS, help="draft initialisation")
    ap.add_argument(
        "--accept", nargs="+", default=list(ACCEPT_RULES), choices=list(ACCEPT_RULES), help="rules to measure"
    )
    ap.add_argument("--cfg", type=float, default=3.0, help="CFG scale (default 3.0, the demo's)")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds; the median is reported (default 3)")
    ap.add_argument("--quality-num", type=int, default=2000, help="quality: samples per seed (default 2000)")
    ap.add_argument("--quality-batch", type=int, default=100, help="quality: samples per call (default 100)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="quality: sampling seeds (0 1 2)")
    ap.add_argument(
        "--models",
        nargs="+",
        default=["token"],
        choices=["token", "coarse"],
        help="quality: the token GPT and/or the run's coarse-to-fine models (default token)",
    )
    ap.add_argument(
        "--name", default="speculative", help="result name: JSON, doc section and plot (default speculative)"
    )
    ap.add_argument("--no-timing", action="store_true", help="skip the timing part")
    ap.add_argument("--no-quality", action="store_true", help="skip the quality part")
    ap.add_argument("--no-doc", action="store_true", help="write no JSON, plot or doc section")
    ap.add_argument(
        "--merge",
        action="store_true",
        help="keep what benchmarks/results/NAME.json holds that this run skips: a part, or other models' cells",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument(
        "--compile",
        action="store_true",
        help="timing: also SJD exact with sample --compile (compiled in the warm-up; compile time reported apart)",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP + "; a 2-step GPT on random images")
    a = ap.parse_args()
    if a.smoke:  # a tiny run's GPT (2 steps): exact and prior rules, timing at one sample, quality of 20 samples
        from benchmarks._smoke import tiny_run

        tmp = start_smoke()
        a.run_dir, a.out = str(tiny_run(tmp, until=("classifier", "train-token"))), str(tmp / "cells")
        a.random, a.no_quality, a.no_timing, a.batches, a.num, a.repeats, a.merge = None, False, False, [1], 1, 1, False
        a.quality_num, a.quality_batch, a.seeds, a.models, a.accept = 20, 20, [0], ["token"], ["exact", "prior"]
        a.name, a.no_doc = "speculative-smoke", False
    if a.random and not a.no_quality:
        ap.error("--random times random-init models only: add --no-quality")
    kept = ROOT / "benchmarks" / "results" / f"{a.name}.json"
    trained = kept.is_file() and not json.loads(kept.read_text()).get("random_weights")
    if a.random and a.name != "speculative" and not a.no_doc and trained:
        ap.error(f"{kept}: holds a trained run's result; give the random-weights run another --name")
    if a.threads:
        torch.set_num_threads(a.threads)
    # --window auto: the pass costs are measured in this run's warm-up (not read from an older, differently loaded
    # run's cache) and kept with the result
    costs_file = Path(tempfile.mkdtemp(prefix="speculative-costs-")) / "window-costs.json"
    os.environ.setdefault("CODEPRIOR_WINDOW_COSTS", str(costs_file))
    device = torch.device(a.device)
    if a.random:
        run = random_models(Path(tempfile.mkdtemp(prefix="speculative-")), a.random, device)
    else:
        run = load_run(Path(a.run_dir), device, "coarse" in a.models and not a.no_quality)
    gpt, vq = run["gpt"], run["vq"]
    settings = build_settings(a, run["priors"], a.accept)
    rules = {k: decoder_rule(s, gpt, vq) for k, s in settings.items()}
    res: dict[str, Any] = {
        "run_dir": None if a.random else str(a.run_dir),
        "random_weights": a.random,  # None, or the RANDOM_PRESETS key
        "random_model": RANDOM_PRESETS[a.random][0] if a.random else None,
        "params": sum(p.numel() for p in gpt.parameters()),
        "window": a.window,
        "init": a.init,
        "cfg_scale": a.cfg,
        "temperature": a.temperature,
        "top_k": a.top_k,
        "seq_len": gpt.config.block_size,
        "vocab": gpt.config.vocab_size,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "priors": prior_info(run["priors"], vq),
    }
    if not a.no_quality:  # checked first: a missing classifier fails before the timing work
        models = quality_models(a, run, settings, rules, str(device))
    if not a.no_timing:
        timed = dict(settings)
        timed_rules = dict(rules)
        if a.compile:
            timed["sjd-exact-compiled"] = SampleSettings(
                cfg_scale=a.cfg,
                temperature=a.temperature,
                top_k=a.top_k,
                seed=0,
                decoder=DecoderSettings("sjd", "exact", window=a.window, draft_init=a.init, compile=True),
            )
            timed_rules["sjd-exact-compiled"] = None
        res["timing"] = [timing(a, gpt, timed, timed_rules, b) for b in a.batches]
        cost_path = Path(os.environ["CODEPRIOR_WINDOW_COSTS"])
        if cost_path.is_file():  # the pass costs --window auto measured (per batch bucket and setting)
            res["window_costs"] = json.loads(cost_path.read_text())
        print(load_note(res["timing"][0]["load_average_before"], res["timing"][-1]["load_average_after"]))
    if not a.no_quality:
        cells = Q.run_quality(Path(a.out), models, a.seeds)
        res["quality"] = {"num": a.quality_num, "batch": a.quality_batch, "seeds": a.seeds, "cells": cells}
    if (a.random and a.name == "speculative") or a.no_doc:  # random weights never overwrite a trained run's result
        if res.get("quality"):
            summarize_quality(res["quality"], res["priors"])
        return
    import shlex
    import sys

    cmd = ".venv/bin/python -m benchmarks.speculative " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    res["command"] = cmd
    part = {"command": cmd, "threads": res["threads"], "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine()}
    res["parts"] = {k: part for k in ("timing",) if k in res}
    if "quality" in res:
        res["parts"][quality_part(res["quality"]["cells"])] = part
    prev_path = ROOT / "benchmarks" / "results" / f"{a.name}.json"
    if a.merge and prev_path.is_file():
        try:
            merge_previous(res, json.loads(prev_path.read_text()))
        except ValueError as e:
            raise SystemExit(f"{prev_path}: cannot merge: {e}") from None
    if res.get("quality"):
        summarize_quality(res["quality"], res["priors"])
    path = write_result(a.name, res)
    if res.get("quality"):
        Q.frontier_plot(res["quality"]["rows"], res["priors"], frontier_image(a.name))
    res = json.loads(path.read_text())  # with the machine and date, as recorded
    update_doc_section(a.name, markdown(res, cmd))
    update_doc_section(a.name, markdown(res, cmd), doc=SAMPLING_DOC)
    print(f"wrote {path}, {DOC} and {SAMPLING_DOC} (section {a.name})")


def quality_part(cells: list[dict[str, Any]]) -> str:
    """The ``parts`` key of a quality run: which models it measured ('quality (token)')."""
    return f"quality ({', '.join(dict.fromkeys(c['model'] for c in cells))})"


def summarize_quality(q: dict[str, Any], priors: dict[str, dict[str, Any]]) -> None:
    """Rows and verdict of the quality part's cells (after any merge), printed."""
    q["rows"] = Q.summarize(q["cells"])
    q["verdict"] = Q.verdict_all(q["rows"])
    print(Q.quality_table(q["rows"], priors))
    print("\n".join(q["verdict"]))


def merge_previous(res: dict[str, Any], prev: dict[str, Any]) -> None:
    """``--merge``: keep the part of ``prev`` this run skipped, with its command, and under quality the cells of
    the models this run did not measure, with the commands that measured them."""
    where = {"machine": prev["machine"]} if prev.get("machine") else {}  # parts written before they named it
    prev_parts = {k: {**where, **v} for k, v in (prev.get("parts") or {}).items()}
    if "quality" in prev_parts and prev.get("quality"):  # results written before parts named their models
        prev_parts[quality_part(prev["quality"]["cells"])] = prev_parts.pop("quality")
    if "timing" in prev and "timing" not in res:
        res["timing"] = prev["timing"]
        if "timing" in prev_parts:
            res["parts"]["timing"] = prev_parts["timing"]
    if "quality" not in prev:
        return
    if "quality" not in res:
        res["quality"] = prev["quality"]
        res["parts"].update({k: v for k, v in prev_parts.items() if k.startswith("quality")})
        return
    measured = {c["model"] for c in res["quality"]["cells"]}
    res["quality"]["cells"] = Q.merge_cells(prev["quality"]["cells"], res["quality"]["cells"])
    res["quality"]["seeds"] = sorted({c["seed"] for c in res["quality"]["cells"]})
    for k, info in prev_parts.items():  # a command whose models were all measured again is replaced
        if k.startswith("quality (") and not set(k[len("quality (") : -1].split(", ")) <= measured:
            res["parts"].setdefault(k, info)


if __name__ == "__main__":
    main()
