"""KV-cache generation vs full recompute (a plain loop calling the training forward on the growing sequence).

Target (issue 3): the cache is at least 5x faster than recompute at 256 tokens on CPU.

    .venv/bin/python benchmarks/kv_cache.py [--model GPT-tiny] [--batch 4] [--seq-len 256] [--repeats 3]

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
from _common import load_note, update_doc_section, write_result

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

    from _common import ROOT

    from codeprior.models import gpt as new

    src = subprocess.run(
        ["git", "show", f"{rev}:src/codeprior/models/gpt.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    path = os.path.join(tempfile.mkdtemp(), "gpt_before.py")
    with open(path, "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("gpt_before", path)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="GPT-tiny", help="registry name (default GPT-tiny)")
    ap.add_argument("--batch", type=int, default=4, help="samples per call (default 4)")
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
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
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
            f"python benchmarks/kv_cache.py --model {a.model} --batch {a.batch} --seq-len {a.seq_len} "
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
