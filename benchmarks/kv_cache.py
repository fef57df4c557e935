"""KV-cache generation vs full recompute (a plain loop calling the training forward on the growing sequence).

Target (issue 3): the cache is at least 5x faster than recompute at 256 tokens on CPU.

    .venv/bin/python -m benchmarks.kv_cache [--model GPT-tiny] [--batch 4] [--seq-len 256] [--repeats 3]

``--llamagen REPO`` instead times AR decoding against LlamaGen's own ``generate()`` (``autoregressive/models/
generate.py`` and ``gpt.py`` read from REPO, a LlamaGen git checkout or mirror, at run time: never copied into this
tree) on the same random weights at GPT-B shape: codeprior eager fp32, the compiled decode step, weight-only bf16 and
int8 (interleaved rounds, median, ratios against LlamaGen in the same run; greedy codes checked equal first):

    .venv/bin/python -m benchmarks.kv_cache --llamagen /work/.mirror/FoundationVision+LlamaGen/repo \
        --model GPT-B --batch 1 4 --seq-len 32 --repeats 3 --threads 1

``--before REV`` instead times cached AR decoding of this tree's ``models/gpt.py`` against the one at git revision
REV (same weights and seeds, interleaved in one process, median; the codes must be identical): the regression check
of issue 14 (the static-buffer speculative path must not slow plain AR decoding).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from benchmarks._common import SMOKE_HELP, load_note, start_smoke, update_doc_section, write_result
from codeprior.models import GPT, get_gpt_config, sample_logits


def recompute_generate(model: GPT, labels: torch.Tensor, seq_len: int, cfg_scale: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    B, ncls = labels.shape[0], model.config.num_classes
    lab = torch.cat([labels, torch.full_like(labels, ncls)]) if cfg_scale != 1.0 else labels
    seq = torch.zeros(B, 0, dtype=torch.long)
    with torch.no_grad():
        for i in range(seq_len):
            x = torch.cat([seq, torch.zeros(B, 1, dtype=torch.long)], 1)
            x = torch.cat([x, x]) if cfg_scale != 1.0 else x
            logits = model(x, lab)[:, i]
            if cfg_scale != 1.0:
                c, u = logits.chunk(2)
                logits = u + cfg_scale * (c - u)
            seq = torch.cat([seq, sample_logits(logits, generator=g)[:, None]], 1)
    return seq


def interleaved_times(
    fns: dict[str, Callable[[], Any]], repeats: int
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, Any]]:
    """Run the functions in turn ``repeats`` times (so both see the same machine load on a shared host); return
    wall times, CPU times of this process, and the last outputs."""
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    out: dict[str, Any] = {}
    for _ in range(repeats):
        for k, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            out[k] = fn()
            cpu[k].append(time.process_time() - c0)
            wall[k].append(time.perf_counter() - w0)
    return wall, cpu, out


def compare_revision(
    rev: str, model_name: str, batch: int, seq_len: int, vocab: int, cfg_scale: float, repeats: int
) -> None:
    """AR generation with gpt.py at ``rev`` vs this tree's, interleaved (alternating order), median wall/CPU."""
    import importlib.util
    import subprocess
    import sys
    import tempfile

    from benchmarks._common import ROOT
    from codeprior.models import gpt as new

    src = subprocess.run(
        ["git", "show", f"{rev}:src/codeprior/models/gpt.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    path = os.path.join(tempfile.mkdtemp(), "gpt_before.py")
    with open(path, "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("gpt_before", path)
    assert spec is not None and spec.loader is not None
    old = importlib.util.module_from_spec(spec)
    sys.modules["gpt_before"] = old
    spec.loader.exec_module(old)
    torch.manual_seed(0)
    m_new = new.GPT(new.get_gpt_config(model_name, vocab_size=vocab, num_classes=10, block_size=seq_len)).eval()
    torch.nn.init.normal_(m_new.output.weight, std=0.02)
    m_old = old.GPT(old.get_gpt_config(model_name, vocab_size=vocab, num_classes=10, block_size=seq_len)).eval()
    m_old.load_state_dict(m_new.state_dict())
    labels = torch.arange(batch) % 10

    def gen(m: Any) -> Callable[[], torch.Tensor]:
        return lambda: m.generate(
            labels, seq_len, cfg_scale=cfg_scale, generator=[torch.Generator().manual_seed(i) for i in range(batch)]
        )

    fns = {"before": gen(m_old), "after": gen(m_new)}
    first = {k: fn() for k, fn in fns.items()}  # warm-up
    same = bool(torch.equal(first["before"], first["after"]))
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats):
        for k in ("before", "after") if r % 2 == 0 else ("after", "before"):
            w0, c0 = time.perf_counter(), time.process_time()
            fns[k]()
            cpu[k].append(time.process_time() - c0)
            wall[k].append(time.perf_counter() - w0)
    mw = {k: statistics.median(v) for k, v in wall.items()}
    mc = {k: statistics.median(v) for k, v in cpu.items()}
    print(
        f"AR {model_name} B={batch} L={seq_len} vocab={vocab} cfg={cfg_scale}, gpt.py at {rev} vs this tree "
        f"({torch.get_num_threads()} thread(s), median of {repeats}): wall {mw['before']:.3f}s -> {mw['after']:.3f}s "
        f"(after/before {mw['after'] / mw['before']:.3f}), CPU {mc['before']:.3f}s -> {mc['after']:.3f}s "
        f"({mc['after'] / mc['before']:.3f}); identical codes: {same}"
    )


def load_llamagen(repo: str) -> tuple[Any, Callable[..., torch.Tensor]]:
    """``(GPT_models, generate)`` of LlamaGen, imported from the files of ``repo`` (a checkout, or a bare mirror read
    with ``git show HEAD:...``) copied to a temporary folder for this process only."""
    import importlib
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    tmp = Path(tempfile.mkdtemp())
    for rel in ("autoregressive/models/gpt.py", "autoregressive/models/generate.py", "utils/drop_path.py"):
        f = Path(repo) / rel
        text = (
            f.read_text()
            if f.is_file()
            else subprocess.run(
                ["git", "-C", repo, "show", f"HEAD:{rel}"], check=True, capture_output=True, text=True
            ).stdout
        )
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_text(text)
    sys.path.insert(0, str(tmp))
    gpt_mod = importlib.import_module("autoregressive.models.gpt")
    gen_mod = importlib.import_module("autoregressive.models.generate")
    return gpt_mod.GPT_models, gen_mod.generate


def compare_llamagen(
    repo: str, model_name: str, batches: list[int], seq_len: int, vocab: int, cfg_scale: float, repeats: int,
    variants: list[str], threads_flag: int, write: bool,
) -> None:  # fmt: skip
    """AR decoding of LlamaGen's ``generate()`` vs codeprior's variants on the same weights (see the docstring)."""
    import warnings

    from codeprior.decoding import ar
    from codeprior.decoding.weights import cast_weights
    from codeprior.models.llamagen import from_llamagen

    warnings.filterwarnings("ignore", message=".*sdp_kernel.*")  # LlamaGen's decode loop uses the old context
    gpt_models, lg_generate = load_llamagen(repo)
    torch.manual_seed(0)
    lg = gpt_models[model_name](
        vocab_size=vocab, block_size=256, num_classes=1000, cls_token_num=1, model_type="c2i",
        resid_dropout_p=0.0, ffn_dropout_p=0.0, token_dropout_p=0.0,
    ).eval()  # fmt: skip
    torch.nn.init.normal_(lg.output.weight, std=0.02)  # LlamaGen's zero head would make every draw uniform
    models = {
        "fp32": from_llamagen(lg),
        "bf16": cast_weights(from_llamagen(lg), "bf16"),
        "int8": cast_weights(from_llamagen(lg), "int8"),
    }
    load_before = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []
    for batch in batches:
        labels = torch.arange(batch) * 7 % 1000
        # the same model: LlamaGen's greedy codes (top_k=1) = codeprior's greedy codes
        greedy_lg = lg_generate(lg, labels, 8, cfg_scale=cfg_scale, top_k=1).long()
        same_greedy = bool(torch.equal(greedy_lg, models["fp32"].generate(labels, 8, cfg_scale, temperature=0.0)))

        def ours(v: str, labels: torch.Tensor = labels, batch: int = batch) -> Callable[[], torch.Tensor]:
            m = models[v.removesuffix("-compiled")]
            return lambda: m.generate(
                labels, seq_len, cfg_scale=cfg_scale, compile=v.endswith("-compiled"),
                generator=[torch.Generator().manual_seed(i) for i in range(batch)],
            )  # fmt: skip

        def llamagen(labels: torch.Tensor = labels) -> torch.Tensor:
            torch.manual_seed(0)
            return lg_generate(lg, labels, seq_len, cfg_scale=cfg_scale, temperature=1.0, top_k=0, top_p=1.0)

        fns: dict[str, Callable[[], Any]] = {"LlamaGen generate()": llamagen, **{v: ours(v) for v in variants}}
        first: dict[str, float] = {}
        outs: dict[str, Any] = {}
        for k, fn in fns.items():  # warm-up; a compiled variant compiles here
            w0 = time.perf_counter()
            outs[k] = fn()
            first[k] = time.perf_counter() - w0
        wall: dict[str, list[float]] = {k: [] for k in fns}
        names = list(fns)
        for r in range(repeats):  # interleaved, the order rotating each round
            for k in names[r % len(names) :] + names[: r % len(names)]:
                w0 = time.perf_counter()
                fns[k]()
                wall[k].append(time.perf_counter() - w0)
        med = {k: statistics.median(v) for k, v in wall.items()}
        ref = med["LlamaGen generate()"]
        for k in names:
            n_pos = seq_len  # the compiled step's key: (rows, cls_token_num + seq_len - 1, dtype, device)
            key = (2 * batch if cfg_scale != 1.0 else batch, n_pos, torch.float32, "cpu")
            row = {
                "batch": batch, "variant": k, "median_s": med[k], "times": wall[k], "ms_per_token": 1e3 * med[k] / seq_len,
                "vs_llamagen": ref / med[k], "first_call_s": first[k],
                "compile_s": ar.COMPILE_SECONDS.get(key) if k.endswith("-compiled") else None,
                "same_codes_as_fp32_eager": (
                    bool(torch.equal(outs[k], outs["fp32"])) if k in ("fp32-compiled",) and "fp32" in outs else None
                ),
                "greedy_codes_equal_llamagen": same_greedy,
            }  # fmt: skip
            rows.append(row)
            print(
                f"B={batch} {k:>22}: {row['ms_per_token']:7.1f} ms/token, {row['vs_llamagen']:.2f}x LlamaGen"
                + (f", compile {row['compile_s']:.0f} s" if row["compile_s"] else "")
                + (f", same codes as fp32 eager: {row['same_codes_as_fp32_eager']}" if k == "fp32-compiled" else ""),
                flush=True,
            )
    load_after = os.getloadavg()[0]
    if not write:
        return
    threads = torch.get_num_threads()
    write_result(
        "ar_vs_llamagen",
        {
            "model": model_name, "vocab": vocab, "seq_len": seq_len, "cfg_scale": cfg_scale, "repeats": repeats,
            "threads": threads, "rows": rows, "load_average_before": load_before, "load_average_after": load_after,
        },
    )  # fmt: skip
    cmd = (
        f"python -m benchmarks.kv_cache --llamagen LLAMAGEN_REPO --model {model_name} --batch {' '.join(map(str, batches))} "
        f"--seq-len {seq_len} --vocab {vocab} --cfg-scale {cfg_scale} --repeats {repeats} "
        f"--variants {','.join(variants)}" + (f" --threads {threads_flag}" if threads_flag else "")
    )
    table = "\n".join(
        f"| {r['batch']} | {r['variant']} | {r['ms_per_token']:.0f} | **{r['vs_llamagen']:.2f}x** | "
        + (f"{r['compile_s']:.0f} s" if r["compile_s"] else "")
        + " |"
        for r in rows
    )
    md = f"""## AR decoding vs LlamaGen's generate()

`{cmd}` (LLAMAGEN_REPO: a LlamaGen checkout; its `generate.py` / `gpt.py` are imported at run time, never copied
here; {threads} torch thread(s); runs interleaved with the order rotating, median of {repeats}). {model_name} shape
(vocabulary {vocab}, 256-token context), random weights shared by both (codeprior's GPT is `from_llamagen` on
LlamaGen's very parameters), CFG {cfg_scale} (doubled batch), {seq_len} tokens per sample (not 256: a GPT-B token on
this loaded CPU costs about 0.1-0.2 s per batch). Greedy codes equal LlamaGen's at every batch: {all(r["greedy_codes_equal_llamagen"] for r in rows)}.

| batch | decoder | ms / token | speed vs LlamaGen | compile time |
|---|---|---|---|---|
{table}

`fp32` is `GPT.generate` (eager, prefix views of the KV cache); `-compiled` is `generate(..., compile=True)`
(`sample --compile`: the fixed-shape step through `torch.compile`; the compile time is its first call,
paid once per batch shape and process); `bf16` / `int8` are `sample --weights bf16|int8` (weight-only, fp32
activations, norms and KV cache; int8 through torch's `_weight_int8pack_mm`). Target (issue 26): >= 1.5x LlamaGen
at batch 1 and 4 with CFG. {load_note(load_before, load_after)}"""
    update_doc_section("ar_vs_llamagen", md)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="GPT-tiny", help="registry name (default GPT-tiny)")
    ap.add_argument("--batch", type=int, nargs="+", default=[4], help="samples per call (default 4)")
    ap.add_argument("--seq-len", type=int, default=256, help="tokens per sample, a square (default 256 = 16x16)")
    ap.add_argument("--vocab", type=int, default=16384, help="vocabulary size (default 16384, LlamaGen's)")
    ap.add_argument("--cfg-scale", type=float, default=2.0, help="CFG scale (doubled batch; default 2.0)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs; the median is reported (default 3)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    ap.add_argument(
        "--before",
        default=None,
        metavar="REV",
        help="compare AR decoding with gpt.py at git revision REV instead (prints; writes nothing)",
    )
    ap.add_argument("--llamagen", default=None, metavar="REPO", help="compare with LlamaGen's generate() (above)")
    ap.add_argument(
        "--variants",
        default="fp32,fp32-compiled,bf16,int8",
        help="--llamagen: codeprior decoders to time (fp32, bf16, int8, each optionally -compiled)",
    )
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    a = ap.parse_args()
    if a.smoke:  # GPT-tiny, 16 tokens of 64 codes, one sample, one round
        start_smoke()
        a.model, a.batch, a.seq_len, a.vocab, a.repeats, a.llamagen, a.before = "GPT-tiny", [1], 16, 64, 1, None, None
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.llamagen:
        compare_llamagen(
            a.llamagen, a.model, a.batch, a.seq_len, a.vocab, a.cfg_scale, a.repeats, a.variants.split(","),
            a.threads, not a.no_doc,
        )  # fmt: skip
        return
    if len(a.batch) != 1:
        ap.error("--batch takes one size (several only with --llamagen)")
    a.batch = a.batch[0]
    if a.before:
        compare_revision(a.before, a.model, a.batch, a.seq_len, a.vocab, a.cfg_scale, a.repeats)
        return
    torch.manual_seed(0)
    cfg = get_gpt_config(a.model, vocab_size=a.vocab, num_classes=10, block_size=a.seq_len)
    model = GPT(cfg).eval()
    torch.nn.init.normal_(model.output.weight, std=0.02)
    labels = torch.arange(a.batch) % 10

    def cached() -> torch.Tensor:
        return model.generate(labels, a.seq_len, cfg_scale=a.cfg_scale, generator=torch.Generator().manual_seed(0))

    def recompute() -> torch.Tensor:
        return recompute_generate(model, labels, a.seq_len, a.cfg_scale, seed=0)

    cached()  # warm-up
    load_before = os.getloadavg()[0]
    wall, cpu, out = interleaved_times({"cache": cached, "recompute": recompute}, a.repeats)
    t_cache, t_re = statistics.median(wall["cache"]), statistics.median(wall["recompute"])
    c_cache, c_re = statistics.median(cpu["cache"]), statistics.median(cpu["recompute"])
    load_after = os.getloadavg()[0]
    same = bool(torch.equal(out["cache"], out["recompute"]))
    ratio, cpu_ratio = t_re / t_cache, c_re / c_cache
    tok_s = a.batch * a.seq_len / t_cache
    print(
        f"{a.model} B={a.batch} L={a.seq_len} cfg={a.cfg_scale}: cache {t_cache:.2f}s, recompute {t_re:.2f}s, "
        f"speed-up {ratio:.1f}x (CPU time {c_cache:.2f}s vs {c_re:.2f}s: {cpu_ratio:.1f}x), identical tokens: {same}"
    )
    write_result(
        "kv_cache",
        {
            "model": a.model,
            "batch": a.batch,
            "seq_len": a.seq_len,
            "vocab": a.vocab,
            "cfg_scale": a.cfg_scale,
            "threads": torch.get_num_threads(),
            "cache_s": t_cache,
            "recompute_s": t_re,
            "cache_times": wall["cache"],
            "recompute_times": wall["recompute"],
            "speedup": ratio,
            "cache_cpu_s": c_cache,
            "recompute_cpu_s": c_re,
            "cache_cpu_times": cpu["cache"],
            "recompute_cpu_times": cpu["recompute"],
            "cpu_time_speedup": cpu_ratio,
            "cache_tokens_per_s": tok_s,
            "identical_tokens": same,
            "load_average_before": load_before,
            "load_average_after": load_after,
        },
    )
    if not a.no_doc:
        cmd = (
            f"python -m benchmarks.kv_cache --model {a.model} --batch {a.batch} --seq-len {a.seq_len} "
            f"--vocab {a.vocab} --cfg-scale {a.cfg_scale} --repeats {a.repeats}"
            + (f" --threads {a.threads}" if a.threads else "")
        )
        md = f"""## KV-cache generation vs recompute

`{cmd}` ({torch.get_num_threads()} torch thread(s); runs interleaved, median of {a.repeats}; wall and process CPU time)

| model | vocab | batch (x2 CFG) | tokens | KV cache | full recompute | speed-up (wall) | speed-up (CPU time) | identical tokens |
|---|---|---|---|---|---|---|---|---|
| {a.model} | {a.vocab} | {a.batch} | {a.seq_len} | {t_cache:.2f} s ({tok_s:.0f} tok/s) | {t_re:.2f} s | **{ratio:.1f}x** | {cpu_ratio:.1f}x | {same} |

Target: >= 5x at 256 tokens. Recompute = the training forward on the growing sequence at every step (what a
cache-free implementation does); both use the same sampler and seed, so the tokens must be identical.
{load_note(load_before, load_after)} Process CPU time is the steadier figure."""
        update_doc_section("kv_cache", md)


if __name__ == "__main__":
    main()
