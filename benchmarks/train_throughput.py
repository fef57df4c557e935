"""Training throughput (tokens/s) per objective: token vs cluster-ce vs coarse, on CPU.

One optimizer step = forward, loss, backward, grad clip, AdamW step, exactly as the trainer runs it
(``Objective.forward`` of ``codeprior.train.objectives``), on synthetic codes with a DCPE-like prior: k = vocab / 2 clusters of
unequal sizes (about half singletons, the rest of 2-6 codes, members scattered over the codebook). The three
objectives are timed in interleaved rounds so machine load hits them alike; median of ``--repeats`` rounds.

Targets (issue 4): cluster-ce costs at most 10% more step time than token; coarse is faster than token.
A second table times the loss alone (forward + backward) for several implementations of the cluster log-sum-exp.

    .venv/bin/python -m benchmarks.train_throughput [--models GPT-tiny GPT-S] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from typing import Any

import torch

from benchmarks._common import SMOKE_HELP, load_note, start_smoke, update_doc_section, write_result
from codeprior.models.gpt import GPT, get_gpt_config
from codeprior.train.objective_traits import OBJECTIVE_SETTINGS, TRAITS, gpt_objectives
from codeprior.train.objectives import cluster_logits, get_objective

# the registry's GPT objectives that train from codes and one partition alone; those that need more from the run
# (snce's neighbour table, hier-cluster-ce's nested levels) are timed by benchmarks/objective_throughput.py
OBJECTIVES = tuple(o for o in gpt_objectives() if o not in OBJECTIVE_SETTINGS)


def dcpe_like_prior(vocab: int, seed: int = 0) -> torch.Tensor:
    """token_to_cluster [vocab] with k = vocab / 2: ~half singletons, the rest in clusters of 2-6, shuffled."""
    g = torch.Generator().manual_seed(seed)
    k = vocab // 2
    sizes = torch.ones(k, dtype=torch.long)
    extra = vocab - k
    while extra > 0:  # grow random clusters until every code is placed
        c = int(torch.randint(0, k, (1,), generator=g))
        add = min(extra, int(torch.randint(1, 6, (1,), generator=g)))
        if sizes[c] + add <= 6:
            sizes[c] += add
            extra -= add
    ttc = torch.repeat_interleave(torch.arange(k), sizes)
    return ttc[torch.randperm(vocab, generator=g)]


def bench_setting(model_name: str, seq_len: int, vocab: int, batch: int, repeats: int, steps: int) -> dict:
    side = int(seq_len**0.5)
    ttc = dcpe_like_prior(vocab)
    k = int(ttc.max()) + 1
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, vocab, (batch, seq_len), generator=g)
    labels = torch.randint(0, 10, (batch,), generator=g)
    runs = {}
    for obj in OBJECTIVES:
        torch.manual_seed(0)
        cfg = get_gpt_config(
            model_name, vocab_size=k if TRAITS[obj].coarse_outputs else vocab, num_classes=10, grid=(side, side)
        )
        model = GPT(cfg).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
        runs[obj] = (model, opt)

    def one_step(obj: str) -> None:
        model, opt = runs[obj]
        loss, _, _ = get_objective(obj).forward(model, codes, labels, ttc, k, 1.0)  # a non-logging step
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for obj in OBJECTIVES:  # warm-up
        one_step(obj)
    times: dict[str, list[float]] = {o: [] for o in OBJECTIVES}
    for _ in range(repeats):
        for obj in OBJECTIVES:
            t0 = time.perf_counter()
            for _ in range(steps):
                one_step(obj)
            times[obj].append((time.perf_counter() - t0) / steps)
    med = {o: statistics.median(t) for o, t in times.items()}
    return {
        "model": model_name,
        "seq_len": seq_len,
        "vocab": vocab,
        "k": k,
        "batch": batch,
        "params": {o: sum(p.numel() for p in runs[o][0].parameters()) for o in OBJECTIVES},
        "step_s": med,
        "step_times": times,
        "tokens_per_s": {o: batch * seq_len / med[o] for o in OBJECTIVES},
        "cluster_ce_overhead": med["cluster-ce"] / med["token"] - 1.0,
        "coarse_speedup": med["token"] / med["coarse"],
    }


def bench_cluster_op(rows: int, vocab: int, repeats: int) -> dict:
    """Forward + backward of the whole cluster-ce loss on [rows, vocab] logits, per implementation of the
    cluster log-sum-exp (all give the same values; asserted)."""
    import torch.nn.functional as F

    from codeprior.train.objectives import cluster_ce_loss

    ttc = dcpe_like_prior(vocab)
    k = int(ttc.max()) + 1
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, vocab, generator=g).mul_(3).requires_grad_()
    t = torch.randint(0, vocab, (rows,), generator=g)
    ct = ttc[t]
    idx2 = ttc.expand(rows, vocab)
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore")
        sp = torch.sparse_coo_tensor(
            torch.stack([ttc, torch.arange(vocab)]), torch.ones(vocab), (k, vocab), check_invariants=False
        ).to_sparse_csr()

    def stable_exp(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = z.detach().amax(-1, keepdim=True)
        return torch.exp(z - m), m

    def with_lse(lse_fn: Any) -> Any:
        return lambda z: F.cross_entropy(z, t) + F.cross_entropy(lse_fn(z), ct)

    def lse_index_add(z: torch.Tensor) -> torch.Tensor:
        e, m = stable_exp(z)
        return z.new_zeros(rows, k).index_add(1, ttc, e).log() + m

    def lse_scatter_add(z: torch.Tensor) -> torch.Tensor:
        e, m = stable_exp(z)
        return z.new_zeros(rows, k).scatter_add(1, idx2, e).log() + m

    def lse_csr(z: torch.Tensor) -> torch.Tensor:
        e, m = stable_exp(z)
        return torch.sparse.mm(sp, e.t()).t().log() + m

    impls = {
        "token CE only (for scale)": lambda z: F.cross_entropy(z, t),
        "codeprior fused cluster_ce_loss (training step)": lambda z: cluster_ce_loss(
            z, t, ttc, 1.0, k=k, return_cluster_logits=False
        )[0],
        "codeprior fused cluster_ce_loss + all cluster logits (logging step)": lambda z: cluster_ce_loss(
            z, t, ttc, 1.0, k=k, return_cluster_logits=True
        )[0],
        "CE + codeprior cluster_logits": with_lse(lambda z: cluster_logits(z, ttc, k)),
        "CE + autograd index_add": with_lse(lse_index_add),
        "CE + autograd scatter_add": with_lse(lse_scatter_add),
        "CE + CSR sparse matmul": with_lse(lse_csr),
    }
    ref = None
    out: dict[str, float] = {}
    for name, fn in impls.items():

        def run(fn: Any = fn) -> float:  # called right away; the default binds this iteration's fn
            x.grad = None
            y = fn(x)
            y.backward()
            return float(y.detach())

        y = run()
        if "only" not in name:
            ref = y if ref is None else ref
            assert abs(y - ref) < 1e-3 * abs(ref), (name, y, ref)
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            ts.append(time.perf_counter() - t0)
        out[name] = statistics.median(ts)
    return {"rows": rows, "vocab": vocab, "k": k, "seconds": out}


def render(data: dict) -> str:
    """Markdown for docs/benchmarks.md from a results dict (as written to benchmarks/results/train_throughput.json)."""
    results, ops = data["settings"], data["cluster_op"]
    lines = [
        "## Training throughput per objective",
        "",
        f"`{data['command']}` (CPU, {data['threads']} torch thread(s); median of {data['repeats']} interleaved rounds "
        f"of {data['steps']} optimizer step(s); synthetic codes; DCPE-like prior with k = vocab/2 unequal clusters)",
        "",
        "| model | tokens x vocab (k) | batch | token tok/s | cluster-ce tok/s | coarse tok/s "
        "| cluster-ce step time vs token (median / best round) | coarse speed-up (median / best) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        t = r["tokens_per_s"]
        best = {o: min(v) for o, v in r["step_times"].items()}
        lines.append(
            f"| {r['model']} | {r['seq_len']} x {r['vocab']} ({r['k']}) | {r['batch']} | {t['token']:.0f} | "
            f"{t['cluster-ce']:.0f} | {t['coarse']:.0f} | {100 * r['cluster_ce_overhead']:+.1f}% / "
            f"{100 * (best['cluster-ce'] / best['token'] - 1):+.1f}% | {r['coarse_speedup']:.2f}x / "
            f"{best['token'] / best['coarse']:.2f}x |"
        )
    lines += [
        "",
        "Targets: cluster-ce at most +10% step time over token; coarse faster than token (its embedding and head "
        "have k = vocab/2 rows instead of vocab). "
        + (
            load_note(data["load_average_before"], data.get("load_average_after"))
            if "load_average_before" in data
            else "The shared 2-core machine was heavily loaded by other jobs while this ran (load average > 10)."
        )
        + " The best round is given beside the median because single rounds vary.",
        "",
        "The cluster-ce loss alone (token CE + cluster CE), forward + backward, by implementation (ms, median):",
        "",
        "| implementation | " + " | ".join(f"[{o['rows']}, {o['vocab']}] -> k={o['k']}" for o in ops) + " |",
        "|---|" + "---|" * len(ops),
    ]
    for name in ops[0]["seconds"]:
        lines.append(f"| {name} | " + " | ".join(f"{1e3 * o['seconds'][name]:.1f}" for o in ops) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["GPT-tiny", "GPT-S"])
    ap.add_argument(
        "--settings",
        nargs="+",
        default=["49:4096:32", "256:16384:8"],
        help="SEQ_LEN:VOCAB:BATCH triples (default: 7x7 codes / 4096, and 16x16 / 16384)",
    )
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds; the median is reported")
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per timing")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: stable on a shared machine)")
    ap.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    ap.add_argument(
        "--render-only",
        action="store_true",
        help="only rewrite the docs section from benchmarks/results/train_throughput.json",
    )
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    a = ap.parse_args()
    if a.smoke:  # GPT-tiny on 16 tokens of 64 codes, batch 2, one step, one round
        start_smoke()
        a.models, a.settings, a.repeats, a.steps, a.render_only = ["GPT-tiny"], ["16:64:2"], 1, 1, False
    if a.render_only:
        import json

        from benchmarks._common import RESULTS

        update_doc_section("train_throughput", render(json.loads((RESULTS / "train_throughput.json").read_text())))
        return
    torch.set_num_threads(a.threads)

    load_before = os.getloadavg()[0]
    results = []
    for model in a.models:
        for s in a.settings:
            L, V, B = (int(v) for v in s.split(":"))
            r = bench_setting(model, L, V, B, a.repeats, a.steps)
            results.append(r)
            tps = r["tokens_per_s"]
            print(
                f"{model} L={L} V={V} k={r['k']} B={B}: "
                + ", ".join(f"{o} {tps[o]:.0f} tok/s" for o in OBJECTIVES)
                + f"; cluster-ce overhead {100 * r['cluster_ce_overhead']:+.1f}%, coarse {r['coarse_speedup']:.2f}x"
            )
    op_shapes = [(64, 256)] if a.smoke else [(2048, 16384), (1568, 4096)]
    ops = [bench_cluster_op(rows, vocab, a.repeats if a.smoke else max(a.repeats, 5)) for rows, vocab in op_shapes]
    for o in ops:
        print(
            f"cluster op rows={o['rows']} V={o['vocab']} k={o['k']}: "
            + ", ".join(f"{n} {1e3 * t:.1f} ms" for n, t in o["seconds"].items())
        )
    cmd = (
        f"python -m benchmarks.train_throughput --models {' '.join(a.models)} --settings {' '.join(a.settings)} "
        f"--repeats {a.repeats} --steps {a.steps} --threads {a.threads}"
    )
    data = {
        "command": cmd,
        "threads": a.threads,
        "repeats": a.repeats,
        "steps": a.steps,
        "settings": results,
        "cluster_op": ops,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
    }
    write_result("train_throughput", data)
    if not a.no_doc:
        update_doc_section("train_throughput", render(data))


if __name__ == "__main__":
    main()
