"""The prepared GPU check: one command, one GPU, under 8 minutes; a JSON result and its docs/benchmarks.md section.

Run it whenever a device is lent (to any issue); ``--dry-run`` runs every part at tiny sizes on CPU (CI does, so
the script cannot rot). Parts, in order, each inside the remaining ``--budget`` (a part that would not fit is
recorded as skipped, and the JSON is rewritten after every part so a killed run still returns what it measured):

1. ``device``: GPU name, torch / CUDA versions, the measured bf16 matmul rate (8192^3) and copy bandwidth.
2. ``train``: GPT-B (vocabulary 16384, 16x16 codes, 1000 classes) training steps under bf16 autocast, the trainer's
   own ``Objective.forward`` + backward + clip + fused AdamW: tokens/s and MFU (6N + attention FLOPs per token
   against the datasheet's dense bf16 peak and the measured matmul rate) for token / cluster-ce / coarse eager and
   token / cluster-ce compiled (compile time = first step minus a warm step).
3. ``pass_cost``: the time of one decoding pass with a window of W positions (W = 1..32) at batch 1 / 16 / 64 with
   CFG (a doubled batch), relative to a one-token pass: the cost model a Jacobi window has to beat.
4. ``decode``: images/s of plain AR (``GPT.generate``: eager, compiled step = CUDA graphs, weight-only bf16) vs
   exact SJD (``jacobi_generate``: ``--window auto``, windows 4 / 16, eager and with the compiled fixed-shape step)
   at batch 1 / 16 / 64, random GPT-B weights, CFG 2.0, and passes.
5. ``tests``: ``pytest tests/test_gpu.py -m gpu`` (KV cache, objectives, training / FSDP / compile / resume /
   sampling subprocesses, one-device FSDP), its pass / fail counts and per-test figures.

    PYTHONPATH=src python3 -m benchmarks.gpu_check --json benchmarks/results/gpu_check.json   # on the GPU machine
    python3 -m benchmarks.gpu_check --render benchmarks/results/gpu_check.json # write its docs section
    python3 -m benchmarks.gpu_check --dry-run                                  # CPU, seconds (CI)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import command

ROOT = Path(__file__).resolve().parents[1]

PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}  # dense bf16 FLOP/s by the vendors' datasheets


class Check:
    """Budget, device, sizes and the growing result of one run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.dry = bool(args.dry_run)
        self.device = torch.device("cpu" if self.dry else "cuda")
        self.t0 = time.perf_counter()
        self.budget = float(args.budget)
        self.json = Path(args.json)
        self.result: dict[str, Any] = {"benchmark": "gpu_check", "command": command("gpu_check"), "dry_run": self.dry}
        self.model = "GPT-tiny" if self.dry else "GPT-B"
        self.vocab, self.grid, self.classes = (512, (4, 4), 10) if self.dry else (16384, (16, 16), 1000)

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def timed(self, fn: Callable[..., Any], reps: int, warm: int = 1) -> list[float]:
        for _ in range(warm):
            fn()
        times = []
        for _ in range(reps):
            self.sync()
            t = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t)
        return times

    def save(self) -> None:
        self.result["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        self.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.result, indent=1, default=str))
        os.replace(tmp, self.json)

    def part(self, name: str, need_s: float, fn: Callable[[], dict[str, Any]]) -> None:
        """Run one part if ``need_s`` seconds are left; record its figures, its error or why it was skipped."""
        if self.left() < need_s and not self.dry:
            self.result[name] = {"skipped": f"needs ~{need_s:.0f} s, {self.left():.0f} s left"}
        else:
            t = time.perf_counter()
            try:
                self.result[name] = fn()
            except Exception as e:  # a failed part is a finding, not the end of the check
                self.result[name] = {"error": f"{type(e).__name__}: {e}"[:2000]}
                if self.dry:
                    raise
            self.result[name]["seconds"] = round(time.perf_counter() - t, 1)
        print(f"[gpu_check] {name}: {json.dumps(self.result[name], default=str)[:600]}", flush=True)
        self.save()


def part_device(c: Check) -> dict[str, Any]:
    out: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0]}
    n = 512 if c.dry else 8192
    if c.device.type == "cuda":
        p = torch.cuda.get_device_properties(c.device)
        out |= {"gpu": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / 2**30, 1)}
        out["sms"] = p.multi_processor_count
    dt = torch.bfloat16 if c.device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=c.device, dtype=dt)
    b = torch.randn(n, n, device=c.device, dtype=dt)
    t = statistics.median(c.timed(lambda: a @ b, reps=10, warm=3))
    out["matmul_tflops"] = round(2 * n**3 / t / 1e12, 1)
    x = torch.empty(2**28 if not c.dry else 2**20, dtype=torch.uint8, device=c.device)
    y = torch.empty_like(x)
    t = statistics.median(c.timed(lambda: y.copy_(x), reps=10, warm=2))
    out["copy_gb_s"] = round(2 * x.numel() / t / 1e9, 1)
    return out


def _prior(vocab: int) -> tuple[torch.Tensor, int]:
    """A DCPE-like partition: k = vocab / 2 unequal clusters with members scattered over the codebook."""
    g = torch.Generator().manual_seed(0)
    k = vocab // 2
    cut = torch.sort(torch.randperm(vocab - 1, generator=g)[: k - 1] + 1).values
    ttc = torch.zeros(vocab, dtype=torch.long)
    ttc[cut] = 1
    return ttc.cumsum(0)[torch.randperm(vocab, generator=g)], k


def _flops_per_token(model: torch.nn.Module, seq: int) -> float:
    """6 N (non-embedding + head) + 12 L d T: the training FLOPs of one token (PaLM's MFU convention)."""
    cfg: Any = model.config
    n = sum(p.numel() for name, p in model.named_parameters() if "tok_embeddings" not in name and "cls" not in name)
    return 6 * n + 12 * cfg.n_layer * cfg.dim * seq


def part_train(c: Check, batch: int) -> dict[str, Any]:
    from codeprior.models.gpt import GPT, get_gpt_config
    from codeprior.train.objectives import get_objective

    ttc, k = _prior(c.vocab)
    ttc = ttc.to(c.device)
    seq = c.grid[0] * c.grid[1]
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, c.vocab, (batch, seq), generator=g).to(c.device)
    labels = torch.randint(0, c.classes, (batch,), generator=g).to(c.device)
    peak = next((v for key, v in PEAK_BF16.items() if key in c.result.get("device", {}).get("gpu", "")), None)
    measured = c.result.get("device", {}).get("matmul_tflops")
    out: dict[str, Any] = {"model": c.model, "vocab": c.vocab, "k": k, "seq": seq, "batch": batch, "runs": {}}
    runs = [("token", False), ("cluster-ce", False), ("coarse", False)]
    runs += [] if c.dry else [("token", True), ("cluster-ce", True)]  # compiling on CPU takes minutes
    for obj, compiled in runs:
        name = f"{obj}{' compiled' if compiled else ''}"
        if c.left() < (90 if compiled else 25) and not c.dry:
            out["runs"][name] = {"skipped": f"{c.left():.0f} s left"}
            continue
        torch.manual_seed(0)
        cfg = get_gpt_config(c.model, vocab_size=k if obj == "coarse" else c.vocab, num_classes=c.classes, grid=c.grid)
        model = GPT(cfg).to(c.device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=c.device.type == "cuda")
        fwd = torch.compile(model) if compiled else model
        objective = get_objective(obj)
        losses: list[torch.Tensor] = []

        def step(
            fwd: Any = fwd, model: Any = model, opt: Any = opt, objective: Any = objective, losses: list = losses
        ) -> None:
            with torch.autocast(c.device.type, dtype=torch.bfloat16, enabled=c.device.type == "cuda"):
                loss, _, _ = objective.forward(fwd, codes, labels, ttc, k, 1.0)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.detach())

        first = c.timed(step, reps=1, warm=0)[0]
        times = c.timed(step, reps=3 if c.dry else 10, warm=2)
        med = statistics.median(times)
        tps = batch * seq / med
        fpt = _flops_per_token(model, seq)
        r: dict[str, Any] = {"step_s": med, "tokens_per_s": round(tps), "flops_per_token": fpt}
        r["loss_finite"] = all(math.isfinite(float(v)) for v in losses)
        if compiled:
            r["compile_s"] = round(first - med, 1)
        if peak:
            r["mfu_datasheet"] = round(fpt * tps / peak, 3)
        if measured:
            r["mfu_measured_matmul"] = round(fpt * tps / (measured * 1e12), 3)
        if c.device.type == "cuda":
            r["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            torch.cuda.reset_peak_memory_stats()
        out["runs"][name] = r
        del model, opt, fwd, step
        if c.device.type == "cuda":
            torch.cuda.empty_cache()
    base = out["runs"].get("token", {}).get("step_s")
    for r in out["runs"].values():
        if base and "step_s" in r:
            r["step_vs_token_eager"] = round(r["step_s"] / base, 3)
    return out


def _decode_model(c: Check) -> Any:
    from codeprior.models.gpt import GPT, get_gpt_config

    torch.manual_seed(0)
    cfg = get_gpt_config(c.model, vocab_size=c.vocab, num_classes=c.classes, grid=c.grid)
    return GPT(cfg).to(c.device).eval()


def part_pass_cost(c: Check, batches: list[int], windows: list[int]) -> dict[str, Any]:
    """Median time of one cached decoding pass of W positions (Jacobi's ``pos`` path) at the middle of the sequence."""
    from codeprior.models.gpt import KVCache

    model = _decode_model(c)
    cfg = model.config
    L = cfg.cls_token_num + cfg.block_size + max(windows)
    out: dict[str, Any] = {"model": c.model, "cfg": True, "ms": {}, "vs_one_token": {}}
    with torch.no_grad():
        for b in batches:
            b2 = 2 * b  # CFG doubles the batch
            caches = [KVCache(b2, cfg.kv_heads, L, cfg.head_dim) for _ in model.layers]
            for cache in caches:
                cache.k = torch.zeros(cache.shape, device=c.device)
                cache.v = torch.zeros(cache.shape, device=c.device)
            ms = {}
            for w in windows:
                x = torch.randint(0, c.vocab, (b2, w), device=c.device)
                pos = (cfg.block_size // 2 + torch.arange(w, device=c.device)).expand(b2, w)

                def one(x: torch.Tensor = x, pos: torch.Tensor = pos, caches: Any = caches) -> Any:
                    return model.output(model.forward_hidden(model.tok_embeddings(x), caches=caches, pos=pos))

                ms[w] = round(1e3 * statistics.median(c.timed(one, reps=5 if c.dry else 20, warm=3)), 3)
            out["ms"][b] = ms
            out["vs_one_token"][b] = {w: round(v / ms[windows[0]], 2) for w, v in ms.items()}
    return out


def part_decode(c: Check, batches: list[int], windows: list[int]) -> dict[str, Any]:
    from codeprior.decoding.jacobi import jacobi_generate
    from codeprior.decoding.weights import cast_weights

    model = _decode_model(c)
    bf16 = cast_weights(_decode_model(c), "bf16")  # weight-only bf16 (`sample --weights bf16`)
    seq = c.grid[0] * c.grid[1]
    out: dict[str, Any] = {"model": c.model, "cfg_scale": 2.0, "seq": seq, "rows": []}
    for b in batches:
        labels = torch.arange(b, device=c.device) % c.classes
        variants: list[tuple[str, Callable[..., Any]]] = [
            ("AR", lambda labels=labels: (model.generate(labels, cfg_scale=2.0), None)),
            ("AR bf16 weights", lambda labels=labels: (bf16.generate(labels, cfg_scale=2.0), None)),
            ("SJD auto", lambda labels=labels: jacobi_generate(model, labels, cfg_scale=2.0, window="auto")),
        ]
        if not c.dry:  # compiling takes minutes on CPU; the dry run checks the eager paths
            variants.insert(
                1, ("AR compiled", lambda labels=labels: (model.generate(labels, cfg_scale=2.0, compile=True), None))
            )
        for w in windows:
            for compiled in (False, True) if (w == windows[-1] and not c.dry) else (False,):
                variants.append(
                    (
                        f"SJD w{w}{' compiled' if compiled else ''}",
                        lambda labels=labels, w=w, compiled=compiled: jacobi_generate(
                            model, labels, cfg_scale=2.0, window=w, compile=compiled
                        ),
                    )
                )
        ar_s = None
        for name, fn in variants:
            if c.left() < 20 and not c.dry:
                out["rows"].append({"batch": b, "decoder": name, "skipped": f"{c.left():.0f} s left"})
                continue
            torch.manual_seed(1)
            res: list[Any] = []
            first = c.timed(lambda fn=fn, res=res: res.append(fn()), reps=1, warm=0)[
                0
            ]  # compilation included if compiled
            times = c.timed(lambda fn=fn, res=res: res.append(fn()), reps=2, warm=0)
            med = statistics.median(times)
            passes = res[-1][1]
            row: dict[str, Any] = {"batch": b, "decoder": name, "s": round(med, 3), "images_per_s": round(b / med, 2)}
            row["mean_passes"] = seq if passes is None else round(float(passes.float().mean()), 1)
            if "compiled" in name:  # the second and third calls show whether a new call compiles again
                row["compile_s"] = round(first - med, 1)
                row["calls_s"] = [round(first, 2)] + [round(t, 2) for t in times]
            if name == "AR":
                ar_s = med
            elif ar_s:
                row["speed_vs_ar"] = round(ar_s / med, 2)
            out["rows"].append(row)
    return out


def part_tests(c: Check, marks: str, report: Path) -> dict[str, Any]:
    """``pytest -m MARKS`` in a subprocess limited to the budget that is left; counts and the per-test figures."""
    cmd = [sys.executable, "-m", "pytest", "tests/test_gpu.py", "-m", marks, "-q", "-p", "no:cacheprovider", "-rfEs"]
    # the package may not be installed there (a bare GPU machine runs from the checkout): src goes on the path
    path = os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = dict(os.environ, CODEPRIOR_GPU_REPORT=str(report), PYTHONPATH=path)
    if c.dry:  # CPU: check that the test module is importable and collects; the tests themselves run in make test
        cmd.append("--collect-only")
    timeout = max(30.0, c.left() - 10)
    rc: int | str  # the exit status, or "timeout"
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        text, rc = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        text, rc = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), "timeout"
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors)\b", text)}
    res: dict[str, Any] = {"rc": rc, "counts": counts, "tail": text[-3000:]}
    if report.exists():
        res["figures"] = json.loads(report.read_text())
    return res


def render(data: dict[str, Any]) -> str:
    """The docs/benchmarks.md section of a gpu_check result."""
    d = data.get("device", {})
    lines = ["## GPU check", ""]
    if data.get("dry_run") or "gpu" not in d:
        return "\n".join(lines + ["The GPU check has not run on a GPU yet (`benchmarks/gpu_check.py`).", ""])
    lines += [
        f"`{data['command']}` on one **{d['gpu']}** ({d.get('memory_gib')} GiB, compute capability "
        f"{d.get('capability')}), torch {d['torch']} (CUDA {d['cuda']}), {data.get('date', '')}; "
        f"{data.get('elapsed_s')} s in all. Measured ceilings: bf16 matmul {d.get('matmul_tflops')} TFLOP/s "
        f"(8192^3), device copy {d.get('copy_gb_s')} GB/s. Medians of the timed repetitions after warm-up.",
        "",
    ]
    t = data.get("train", {})
    if t.get("runs"):
        lines += [
            f"Training, {t['model']} (vocabulary {t['vocab']}, k = {t['k']}, {t['seq']} tokens, batch {t['batch']}), "
            "bf16 autocast, the trainer's objective + fused AdamW:",
            "",
            "| objective | tokens/s | step vs token eager | MFU (datasheet peak) | MFU (measured matmul) | compile s "
            "| peak GiB |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, r in t["runs"].items():
            if "tokens_per_s" not in r:
                lines.append(f"| {name} | {r.get('skipped', '')} | | | | | |")
                continue
            lines.append(
                f"| {name} | {r['tokens_per_s']:,} | {r.get('step_vs_token_eager', '')} | {r.get('mfu_datasheet', '')} "
                f"| {r.get('mfu_measured_matmul', '')} | {r.get('compile_s', '')} | {r.get('peak_mem_gib', '')} |"
            )
        lines.append("")
    pc = data.get("pass_cost", {})
    if pc.get("ms"):
        ws = list(next(iter(pc["ms"].values())).keys())
        lines += [
            f"One decoding pass of W positions ({pc['model']}, CFG, cached), ms (and x a one-token pass):",
            "",
            "| batch | " + " | ".join(f"W={w}" for w in ws) + " |",
            "|---|" + "---|" * len(ws),
        ]
        for b, ms in pc["ms"].items():
            rel = pc["vs_one_token"][b]
            lines.append(f"| {b} | " + " | ".join(f"{ms[w]:.2f} ({rel[w]:.2f}x)" for w in ws) + " |")
        lines.append("")
    dec = data.get("decode", {})
    if dec.get("rows"):
        lines += [
            f"Decoding, {dec['model']} random weights, CFG {dec['cfg_scale']}, {dec['seq']} tokens:",
            "",
            "| batch | decoder | images/s | vs AR | mean passes | compile s |",
            "|---|---|---|---|---|---|",
        ]
        for r in dec["rows"]:
            if "skipped" in r:
                continue
            lines.append(
                f"| {r['batch']} | {r['decoder']} | {r['images_per_s']} | {r.get('speed_vs_ar', '1.00')} "
                f"| {r['mean_passes']} | {r.get('compile_s', '')} |"
            )
        lines.append("")
    for name, marks in (("tests_fast", "gpu and not slow"), ("tests_slow", "gpu and slow")):
        tests = data.get(name, {})
        if "counts" in tests:
            counts = ", ".join(f"{v} {k}" for k, v in tests["counts"].items()) or "no summary line"
            lines += [f"`pytest tests/test_gpu.py -m '{marks}'`: {counts} (exit {tests.get('rc')}).", ""]
    for name in ("train", "pass_cost", "decode", "tests_fast", "tests_slow"):
        if "error" in data.get(name, {}) or "skipped" in data.get(name, {}):
            lines.append(f"- {name}: {data[name].get('error') or data[name].get('skipped')}")
    lines += ["", *data.get("notes", [])]  # a reader's notes on this result, added to the JSON by hand
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--dry-run", "--smoke", action="store_true", help="every part at tiny sizes on CPU (seconds; CI runs it)"
    )
    ap.add_argument("--budget", type=float, default=450.0, help="seconds for the whole check (default 450)")
    ap.add_argument("--json", default=None, help="result file (default benchmarks/results/gpu_check.json)")
    ap.add_argument("--render", metavar="JSON", help="only write the docs section of an existing result")
    ap.add_argument("--train-batch", type=int, default=32)
    args = ap.parse_args()
    from benchmarks._common import update_doc_section

    if args.render:
        update_doc_section("gpu_check", render(json.loads(Path(args.render).read_text())))
        return
    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device (use --dry-run on CPU)")
    tmp = tempfile.TemporaryDirectory() if args.dry_run and args.json is None else None
    args.json = args.json or (Path(tmp.name) / "gpu_check.json" if tmp else ROOT / "benchmarks/results/gpu_check.json")
    c = Check(args)
    c.result["date"] = time.strftime("%Y-%m-%d %H:%M")
    batches = [1, 2] if c.dry else [1, 16, 64]
    c.part("device", 5, lambda: part_device(c))
    c.part("tests_fast", 30, lambda: part_tests(c, "gpu and not slow", c.json.with_name("gpu_tests_fast.json")))
    c.part("train", 60, lambda: part_train(c, 2 if c.dry else args.train_batch))
    c.part("pass_cost", 20, lambda: part_pass_cost(c, batches, [1, 2, 4, 8, 16, 32] if not c.dry else [1, 4]))
    c.part("decode", 60, lambda: part_decode(c, batches, [4, 16] if not c.dry else [4]))
    c.part("tests_slow", 60, lambda: part_tests(c, "gpu and slow", c.json.with_name("gpu_tests_slow.json")))
    print(render(c.result) if not c.dry else f"[gpu_check] dry run done in {c.result['elapsed_s']} s", flush=True)
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
