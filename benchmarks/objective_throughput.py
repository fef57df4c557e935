"""Step time of the issue-27 objectives against token CE, on CPU: SNCE (K nearest codes) and hier-cluster-ce.

Two tables, each timed in interleaved rounds (every variant once per round, the order rotating) so machine load
hits them alike; medians of ``--repeats`` rounds, ratios to token CE of the same round set:

* the loss alone, forward + backward, on ``[rows, V]`` float32 logits: token CE (``F.cross_entropy``), SNCE with
  the static table (``code`` source) and with per-position encoder embeddings (``encoder``, D = 8), cluster-ce and
  hier-cluster-ce over 3 nested levels (k = V/2, V/4, V/8);
* one optimizer step of GPT-tiny as the trainer runs it (``Objective.forward``, backward, clip, AdamW) on synthetic
  codes: token, snce, hier-cluster-ce.

Goal (issue 27): SNCE within 10% of token CE's step time at V = 16384, K = 32. The neighbour table is built once
per run; its build time is reported too. Synthetic codebook: V x 8 Gaussian rows (LlamaGen's code dimension).

    .venv/bin/python -m benchmarks.objective_throughput [--vocab 16384] [--k 32] [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from benchmarks._common import SMOKE_HELP, load_note, start_smoke, update_doc_section, write_result
from benchmarks.train_throughput import dcpe_like_prior
from codeprior.models.gpt import GPT, get_gpt_config
from codeprior.train.hierarchical import hier_cluster_ce_loss
from codeprior.train.objectives import REGISTRY, cluster_ce_loss, token_loss
from codeprior.train.snce import neighbour_table, snce_loss


def nested_levels(vocab: int, n: int = 3, seed: int = 0) -> list[torch.Tensor]:
    """``n`` nested token-to-cluster maps: a DCPE-like k = V/2 partition, then random pairs of clusters, twice."""
    g = torch.Generator().manual_seed(seed)
    levels = [dcpe_like_prior(vocab, seed)]
    for _ in range(n - 1):
        k = int(levels[-1].max()) + 1
        merge = torch.randperm(k, generator=g) // 2  # cluster c joins group merge[c]: k/2 groups of 2
        levels.append(merge[levels[-1]])
    return levels


def interleaved(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each function over ``repeats`` rounds; the order rotates from round to round."""
    names = list(fns)
    for f in fns.values():  # warm-up
        f()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t0)
    return times


def bench_loss(rows: int, vocab: int, k: int, repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    cb = torch.randn(vocab, 8, generator=g)
    t0 = time.perf_counter()
    table = neighbour_table(cb, k)
    table_s = time.perf_counter() - t0
    x = torch.randn(rows, vocab, generator=g).mul_(3).requires_grad_()
    t = torch.randint(0, vocab, (rows,), generator=g)
    z = torch.randn(rows, 8, generator=g)
    levels = nested_levels(vocab)
    ks = [int(lv.max()) + 1 for lv in levels]

    def run(loss_fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def f() -> None:
            x.grad = None
            loss_fn().backward()

        return f

    fns = {
        "token": run(lambda: token_loss(x, t)),
        "snce": run(lambda: snce_loss(x, t, table)[0]),
        "snce (encoder)": run(lambda: snce_loss(x, t, table, embeddings=z)[0]),
        "cluster-ce": run(lambda: cluster_ce_loss(x, t, levels[0], 1.0, k=ks[0])[0]),
        "hier-cluster-ce (3 levels)": run(lambda: hier_cluster_ce_loss(x, t, levels, [1.0, 1.0, 1.0], ks=ks)[0]),
    }
    times = interleaved(fns, repeats)
    med = {n: statistics.median(v) for n, v in times.items()}
    return {
        "rows": rows,
        "vocab": vocab,
        "k": k,
        "level_ks": ks,
        "table_build_s": table_s,
        "tau": table.tau,
        "target_mass": table.target_mass(),
        "seconds": med,
        "times": times,
        "ratio_to_token": {n: med[n] / med["token"] for n in med},
    }


def bench_step(model_name: str, seq_len: int, vocab: int, batch: int, k: int, repeats: int, steps: int) -> dict:
    side = int(seq_len**0.5)
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, vocab, (batch, seq_len), generator=g)
    labels = torch.randint(0, 10, (batch,), generator=g)
    levels = nested_levels(vocab)
    objs = {
        "token": REGISTRY["token"],
        "snce": REGISTRY["snce"].with_table(neighbour_table(torch.randn(vocab, 8, generator=g), k)),  # type: ignore[attr-defined]
        "hier-cluster-ce": REGISTRY["hier-cluster-ce"].with_levels(levels, [1.0] * len(levels)),  # type: ignore[attr-defined]
    }
    ttc, kk = levels[0], int(levels[0].max()) + 1
    runs = {}
    for name in objs:
        torch.manual_seed(0)
        cfg = get_gpt_config(model_name, vocab_size=vocab, num_classes=10, grid=(side, side))
        model = GPT(cfg).train()
        runs[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05))

    def step(name: str) -> Callable[[], None]:
        def f() -> None:
            model, opt = runs[name]
            for _ in range(steps):
                loss, _, _ = objs[name].forward(model, codes, labels, ttc, kk, 1.0)  # a non-logging step
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)

        return f

    times = interleaved({n: step(n) for n in objs}, repeats)
    times = {n: [s / steps for s in v] for n, v in times.items()}
    med = {n: statistics.median(v) for n, v in times.items()}
    return {
        "model": model_name,
        "seq_len": seq_len,
        "vocab": vocab,
        "batch": batch,
        "k": k,
        "step_s": med,
        "step_times": times,
        "ratio_to_token": {n: med[n] / med["token"] for n in med},
    }


def render(data: dict) -> str:
    """Markdown for docs/benchmarks.md (from benchmarks/results/objective_throughput.json)."""
    lo, st = data["loss"], data["step"]
    lines = [
        "## SNCE and hierarchical cluster-CE against token CE (issue 27)",
        "",
        f"`{data['command']}` ({data['machine']}; {data['threads']} torch thread(s); median of {data['repeats']} "
        "interleaved rounds, the order rotating; synthetic V x 8 Gaussian codebook and codes). "
        + load_note(data.get("load_average_before"), data.get("load_average_after")),
        "",
        f"The loss alone, forward + backward, on [{lo['rows']}, {lo['vocab']}] float32 logits (SNCE K = {lo['k']}, "
        f"tau = {lo['tau']:.3g} from the codebook, {100 * lo['target_mass']:.0f}% of the static target's mass on the "
        f"target; hier-cluster-ce levels k = {', '.join(map(str, lo['level_ks']))}):",
        "",
        "| loss | ms (median) | vs token CE |",
        "|---|---|---|",
    ]
    for n, s in lo["seconds"].items():
        lines.append(f"| {n} | {1e3 * s:.1f} | {lo['ratio_to_token'][n]:.2f}x |")
    lines += [
        "",
        f"One optimizer step of {st['model']} ({st['seq_len']} tokens x {st['vocab']} codes, batch {st['batch']}; "
        "forward, loss, backward, clip, AdamW as the trainer runs them):",
        "",
        "| objective | step s (median) | vs token |",
        "|---|---|---|",
    ]
    for n, s in st["step_s"].items():
        lines.append(f"| {n} | {s:.3f} | {st['ratio_to_token'][n]:.2f}x |")
    snce = st["ratio_to_token"]["snce"]
    lines += [
        "",
        f"Goal: SNCE within 10% of token CE's step time at V = 16384, K = 32: "
        f"{'met' if snce <= 1.10 else 'missed'} ({100 * (snce - 1):+.1f}% per step, "
        f"{100 * (lo['ratio_to_token']['snce'] - 1):+.1f}% for the loss alone). The neighbour table (top-K of a "
        f"V x V distance, in 1024-row blocks) is built once per run: {lo['table_build_s']:.1f} s here. "
        "hier-cluster-ce runs one fused cluster-CE pass per level, so its loss costs about L times a cluster-ce.",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=16384)
    ap.add_argument("--k", type=int, default=32, help="SNCE soft-target size")
    ap.add_argument("--rows", type=int, default=2048, help="tokens of the loss-only table")
    ap.add_argument("--model", default="GPT-tiny")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7, help="interleaved rounds; medians are reported")
    ap.add_argument("--steps", type=int, default=2, help="optimizer steps per timing of the step table")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    a = ap.parse_args()
    if a.smoke:  # the same tables at tiny sizes, written to a temporary folder
        start_smoke()
        a.vocab, a.k, a.rows, a.seq_len, a.batch, a.repeats, a.steps = 256, 4, 64, 16, 2, 2, 1
    torch.set_num_threads(a.threads)
    load_before = os.getloadavg()[0]
    lo = bench_loss(a.rows, a.vocab, a.k, a.repeats)
    print(
        "loss: " + ", ".join(f"{n} {1e3 * s:.1f} ms ({lo['ratio_to_token'][n]:.2f}x)" for n, s in lo["seconds"].items())
    )
    st = bench_step(a.model, a.seq_len, a.vocab, a.batch, a.k, max(3, a.repeats // 2), a.steps)
    print("step: " + ", ".join(f"{n} {s:.3f} s ({st['ratio_to_token'][n]:.2f}x)" for n, s in st["step_s"].items()))
    cmd = (
        f"python -m benchmarks.objective_throughput --vocab {a.vocab} --k {a.k} --rows {a.rows} --model {a.model} "
        f"--seq-len {a.seq_len} --batch {a.batch} --repeats {a.repeats} --steps {a.steps} --threads {a.threads}"
    )
    data = {
        "command": cmd,
        "threads": a.threads,
        "repeats": a.repeats,
        "loss": lo,
        "step": st,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
    }
    path = write_result("objective_throughput", data)
    if not a.no_doc:
        import json

        update_doc_section("objective_throughput", render(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
