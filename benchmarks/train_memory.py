"""Training memory and where the step time goes: the chunked head + loss against today's path, and cheap wins.

Part ``memory`` (GPT-B shape, vocabulary 16384, 16x16 = 256 tokens, batch 8, CPU fp32): one fresh subprocess
per variant and round (token / cluster-ce, full logits vs ``--loss-chunk``), each running the trainer's step
(``Objective.forward`` + backward + clip + AdamW, ``codeprior.train.trainer``'s optimizer settings) ``--steps``
times after a warm-up step. Peak memory = the process's RSS high-water mark (``ru_maxrss``; interpreter, torch,
weights, gradients and AdamW state included) and, beside it, the part above the resident set after building the
model (``VmRSS`` before the first step). Step time: wall-clock and the process's CPU time (one thread, so CPU time
is the step's work, steadier than wall-clock on a loaded machine). Variants alternate within each round.

Part ``breakdown`` (the demo's shape: GPT-tiny, 7x7 codes, vocabulary 4096, batch 32, dropout 0, one thread):
the same step timed with one piece left out at a time (RMSNorm -> a plain scale, RoPE -> identity, the CE loss ->
a mean of the logits, grad clip, the AdamW step) and with the cheap wins (AdamW ``foreach`` / ``fused``, the
chunked loss, ``torch.compile``), in fresh subprocesses, interleaved. The FLOP rate of the step (6 N + 12 L d T
per token, as benchmarks/gpu_check.py) is set against the machine's fp32 matmul rate measured in the same run
(a 1024^3 matmul, and the step's own matmul shapes).

    .venv/bin/python -m benchmarks.train_memory [--part memory breakdown] [--rounds 2] [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from typing import Any

from benchmarks._common import (
    ROOT,
    SMOKE_HELP,
    load_note,
    start_smoke,
    update_doc_section,
    worker_command,
    write_result,
)

MEMORY_SHAPE = {"model": "GPT-B", "grid": 16, "vocab": 16384, "batch": 8}
DEMO_SHAPE = {"model": "GPT-tiny", "grid": 7, "vocab": 4096, "batch": 32}
LOSS_CHUNK = 512
#: breakdown variants: (name, worker flags)
BREAKDOWN = [
    ("trainer step (today)", []),
    ("- RMSNorm (plain scale)", ["--leave-out", "norm"]),
    ("- RoPE (identity)", ["--leave-out", "rope"]),
    ("- CE loss (mean of logits)", ["--leave-out", "loss"]),
    ("- grad clip", ["--leave-out", "clip"]),
    ("- AdamW step", ["--leave-out", "optimizer"]),
    ("AdamW foreach", ["--optimizer", "foreach"]),
    ("AdamW fused", ["--optimizer", "fused"]),
    (f"--loss-chunk {LOSS_CHUNK}", ["--loss-chunk", str(LOSS_CHUNK)]),
    ("AdamW fused + --loss-chunk", ["--optimizer", "fused", "--loss-chunk", str(LOSS_CHUNK)]),
    ("torch.compile", ["--compile"]),
    ("torch.compile + AdamW fused", ["--compile", "--optimizer", "fused"]),
]


# ------------------------------------------------------------------------------------------------ worker
def _vm(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB -> MiB
    return float("nan")


def worker(a: argparse.Namespace) -> dict[str, Any]:
    """One variant in this process: build, warm up, time ``a.steps`` trainer steps; memory and times as a dict."""
    import resource

    import torch

    import codeprior.models.gpt as gpt_mod
    from codeprior.models.gpt import GPT, RMSNorm, get_gpt_config
    from codeprior.train.objectives import get_objective
    from codeprior.train.optim import param_groups

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.leave_out == "norm":
        RMSNorm.forward = lambda self, x: x * self.weight  # type: ignore[method-assign]
    if a.leave_out == "rope":
        gpt_mod.apply_rope = lambda x, rope: x
    k = a.vocab // 2
    ttc = torch.randperm(a.vocab, generator=torch.Generator().manual_seed(0)) % k
    cfg = get_gpt_config(
        a.model,
        vocab_size=k if a.objective == "coarse" else a.vocab,
        num_classes=10,
        grid=(a.grid, a.grid),
        token_dropout_p=0.0,
        resid_dropout_p=0.0,
        ffn_dropout_p=0.0,
    )
    model = GPT(cfg).train()
    torch.nn.init.normal_(model.output.weight, std=0.02)  # a trained-like head (the zero init makes CE trivial)
    run: Any = torch.compile(model) if a.compile else model
    kw: dict[str, Any] = {"foreach": True} if a.optimizer == "foreach" else {}
    if a.optimizer == "fused":
        kw = {"fused": True}
    opt = torch.optim.AdamW(param_groups(model, run, 0.05), lr=1e-4, betas=(0.9, 0.95), **kw)
    g = torch.Generator().manual_seed(1)
    seq = a.grid * a.grid
    codes = torch.randint(0, a.vocab, (a.batch, seq), generator=g)
    labels = torch.randint(0, 10, (a.batch,), generator=g)
    obj = get_objective(a.objective)

    def step() -> None:
        if a.leave_out == "loss":
            loss = run(codes, labels).mean()
        else:
            loss, _, _ = obj.forward(run, codes, labels, ttc, k, 1.0, loss_chunk=a.loss_chunk)
        loss.backward()
        if a.leave_out != "clip":
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if a.leave_out != "optimizer":
            opt.step()
        opt.zero_grad(set_to_none=True)

    rss_built = _vm("VmRSS")
    t0 = time.perf_counter()
    for _ in range(a.warmup):
        step()
    first = time.perf_counter() - t0
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(a.steps):
        step()
    wall, cpu = (time.perf_counter() - w0) / a.steps, (time.process_time() - c0) / a.steps
    n = sum(p.numel() for name, p in model.named_parameters() if "tok_embeddings" not in name and "cls" not in name)
    flops = (6 * n + 12 * cfg.n_layer * cfg.dim * seq) * a.batch * seq
    out = {
        "wall_s": wall,
        "cpu_s": cpu,
        "warmup_s": first,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_built_mib": rss_built,
        "step_gflop": flops / 1e9,
    }
    if a.matmul:  # the machine's fp32 matmul rate: a large square one and the step's own linear shapes
        M = a.batch * seq

        def rate(m: int, kk: int, nn_: int, reps: int) -> float:
            x, w = torch.randn(m, kk), torch.randn(kk, nn_)
            x @ w
            c = time.process_time()
            for _ in range(reps):
                x @ w
            return 2 * m * kk * nn_ * reps / (time.process_time() - c) / 1e9

        out["matmul_1024_gflops"] = rate(1024, 1024, 1024, 20)
        shapes = [
            (M, cfg.dim, 3 * cfg.dim),
            (M, cfg.dim, cfg.ffn_dim),
            (M, cfg.ffn_dim, cfg.dim),
            (M, cfg.dim, a.vocab),
        ]
        flop = [2 * m * kk * nn_ for m, kk, nn_ in shapes]
        times = [2 * m * kk * nn_ / (rate(m, kk, nn_, 20) * 1e9) for m, kk, nn_ in shapes]
        out["matmul_shapes_gflops"] = sum(flop) / sum(times) / 1e9
    return out


# ------------------------------------------------------------------------------------------------ driver
_SPAWNED: list[list[str]] = []  # the worker commands run so far


def run_worker(shape: dict[str, Any], flags: list[str], a: argparse.Namespace, steps: int, warmup: int) -> dict:
    cmd = [
        *worker_command("train_memory"),
        "--worker",
        "--model",
        shape["model"],
        "--grid",
        str(shape["grid"]),
        "--vocab",
        str(shape["vocab"]),
        "--batch",
        str(shape["batch"]),
        "--steps",
        str(steps),
        "--warmup",
        str(warmup),
        "--threads",
        str(a.threads),
        *flags,
    ]
    if a.smoke and _SPAWNED:  # --smoke: one worker process checks the command, the others run in this process
        return worker(parser().parse_args(cmd[cmd.index("--worker") :]))
    _SPAWNED.append(cmd)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, cwd=ROOT)
    if p.returncode:
        raise SystemExit(f"worker failed ({' '.join(flags)}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _med(rs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rs)


def part_memory(a: argparse.Namespace) -> dict[str, Any]:
    variants = {
        f"{obj} {what}": ["--objective", obj, *([] if what == "full logits" else ["--loss-chunk", str(LOSS_CHUNK)])]
        for obj in ("token", "cluster-ce")
        for what in ("full logits", f"--loss-chunk {LOSS_CHUNK}")
    }
    runs: dict[str, list[dict]] = {n: [] for n in variants}
    for r in range(a.rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            res = run_worker(MEMORY_SHAPE, variants[name], a, a.steps, 1)
            runs[name].append(res)
            print(f"memory round {r}: {name}: {res}", flush=True)
    return {"shape": MEMORY_SHAPE, "loss_chunk": LOSS_CHUNK, "steps": a.steps, "rounds": a.rounds, "runs": runs}


def part_breakdown(a: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, list[dict]] = {n: [] for n, _ in BREAKDOWN}
    for r in range(a.rounds):
        order = BREAKDOWN if r % 2 == 0 else list(reversed(BREAKDOWN))
        for name, flags in order:
            first = name == BREAKDOWN[0][0]
            res = run_worker(DEMO_SHAPE, [*flags, *(["--matmul"] if first else [])], a, a.demo_steps, 3)
            runs[name].append(res)
            print(
                f"breakdown round {r}: {name}: {res['cpu_s'] * 1e3:.1f} ms cpu, {res['wall_s'] * 1e3:.1f} ms wall",
                flush=True,
            )
    return {"shape": DEMO_SHAPE, "steps": a.demo_steps, "rounds": a.rounds, "runs": runs}


def render(data: dict[str, Any]) -> str:
    lines = ["## Training memory and step time: chunked head + loss, and where the step time goes", ""]

    def head(p: dict[str, Any]) -> str:
        note = load_note(p.get("load_average_before"), p.get("load_average_after"))
        return f"`{p['command']}` ({p['date']}) on {p['machine']}, {p['threads']} torch thread, fp32. {note}"

    if "memory" in data:
        m = data["memory"]
        s = m["shape"]
        lines += [
            head(m),
            "",
            f"**Memory** ({s['model']} shape, vocabulary {s['vocab']}, {s['grid']}x{s['grid']} = {s['grid'] ** 2} tokens, "
            f"batch {s['batch']}; fresh process per variant, {m['rounds']} interleaved rounds, {m['steps']} timed trainer "
            "steps after a warm-up step; medians). Peak RSS: `ru_maxrss` of the whole process; above build: peak minus "
            "the RSS after building the model (gradients, AdamW state, activations, logits).",
            "",
            "| objective | head + loss | peak RSS (MiB) | vs full | above build (MiB) | vs full | step CPU s | vs full "
            "| step wall s | vs full |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for obj in ("token", "cluster-ce"):
            ref = m["runs"][f"{obj} full logits"]
            for name, rs in m["runs"].items():
                if not name.startswith(obj + " "):
                    continue
                pk, ab = _med(rs, "peak_rss_mib"), statistics.median(r["peak_rss_mib"] - r["rss_built_mib"] for r in rs)
                rpk = _med(ref, "peak_rss_mib")
                rab = statistics.median(r["peak_rss_mib"] - r["rss_built_mib"] for r in ref)
                cpu, wall = _med(rs, "cpu_s"), _med(rs, "wall_s")
                lines.append(
                    f"| {obj} | {name[len(obj) + 1 :]} | {pk:.0f} | {100 * (pk / rpk - 1):+.1f}% | {ab:.0f} | "
                    f"{100 * (ab / rab - 1):+.1f}% | {cpu:.2f} | {cpu / _med(ref, 'cpu_s'):.2f}x | {wall:.2f} | "
                    f"{wall / _med(ref, 'wall_s'):.2f}x |"
                )
        lines.append("")
    if "breakdown" in data:
        b = data["breakdown"]
        s = b["shape"]
        base = b["runs"][BREAKDOWN[0][0]]
        ref_cpu = _med(base, "cpu_s")
        peak = _med(base, "matmul_1024_gflops")
        shp = _med(base, "matmul_shapes_gflops")
        gflop = base[0]["step_gflop"]
        lines += [
            head(b),
            "",
            f"**Where the step time goes** ({s['model']}, {s['grid']}x{s['grid']} codes, vocabulary {s['vocab']}, "
            f"batch {s['batch']}, dropout 0: the demo's trainer step; fresh process per variant, {b['rounds']} "
            f"interleaved rounds of {b['steps']} steps after 3 warm-up steps; CPU time per step, medians). "
            f"fp32 matmul on this machine, same run: {peak:.0f} GFLOP/s at 1024^3, {shp:.0f} GFLOP/s "
            f"({shp / peak:.2f}) over the step's own linear shapes. The step does {gflop:.2f} GFLOP "
            "(6 N + 12 L d T per token).",
            "",
            "| variant | step ms (CPU) | vs today | share of today's step | GFLOP/s | of matmul peak |",
            "|---|---|---|---|---|---|",
        ]
        for name, _ in BREAKDOWN:
            rs = b["runs"][name]
            c = _med(rs, "cpu_s")
            share = f"{100 * (1 - c / ref_cpu):.1f}%" if name.startswith("- ") else ""
            lines.append(
                f"| {name} | {1e3 * c:.1f} | {ref_cpu / c:.2f}x | {share} | {gflop / c:.1f} | {gflop / c / peak:.2f} |"
            )
        lines.append("")
        lines.append(
            "Leave-one-out rows: the step without that piece (its share = the time it costs; a `-` row's GFLOP/s "
            "still counts the full step's FLOPs). Other rows: whole steps with that change (same math)."
        )
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    """The command line: the driver's flags and, hidden, a worker's."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", nargs="+", default=["memory", "breakdown"], choices=("memory", "breakdown"))
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (fresh process per variant and round)")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per process, memory part")
    ap.add_argument("--demo-steps", type=int, default=20, help="timed steps per process, breakdown part")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    ap.add_argument("--render-only", action="store_true", help="rewrite the doc section from the JSON result")
    # worker flags
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", default="GPT-B", help=argparse.SUPPRESS)
    ap.add_argument("--grid", type=int, default=16, help=argparse.SUPPRESS)
    ap.add_argument("--vocab", type=int, default=16384, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=8, help=argparse.SUPPRESS)
    ap.add_argument("--objective", default="token", help=argparse.SUPPRESS)
    ap.add_argument("--loss-chunk", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--optimizer", default="default", choices=("default", "foreach", "fused"), help=argparse.SUPPRESS)
    ap.add_argument("--leave-out", default="", help=argparse.SUPPRESS)
    ap.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--matmul", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--warmup", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    return ap


def main() -> None:
    a = parser().parse_args()
    if a.smoke:  # both parts at GPT-tiny size (16 codes of 4x4, batch 2), one round, one step, 2 breakdown rows
        start_smoke()
        MEMORY_SHAPE.update(model="GPT-tiny", grid=4, vocab=64, batch=2)
        DEMO_SHAPE.update(model="GPT-tiny", grid=4, vocab=64, batch=2)
        a.rounds, a.steps, a.demo_steps, a.render_only = 1, 1, 1, False
        BREAKDOWN[:] = [BREAKDOWN[0], BREAKDOWN[7]]  # today's step and fused AdamW (no leave-out: patches in process)
    if a.worker:
        print(json.dumps(worker(a)))
        return
    from benchmarks._common import RESULTS

    if a.render_only:
        update_doc_section("train_memory", render(json.loads((RESULTS / "train_memory.json").read_text())))
        return
    data: dict[str, Any] = {}
    for part, fn in (("memory", part_memory), ("breakdown", part_breakdown)):
        if part in a.part:
            before = os.getloadavg()[0]
            res = fn(a)
            from benchmarks._common import machine

            res.update(
                command=f"python -m benchmarks.train_memory --part {part} --rounds {a.rounds} --steps {a.steps} "
                f"--demo-steps {a.demo_steps} --threads {a.threads}",
                threads=a.threads,
                machine=machine(),
                date=time.strftime("%Y-%m-%d %H:%M"),
                load_average_before=before,
                load_average_after=os.getloadavg()[0],
            )
            data[part] = res
    old = RESULTS / "train_memory.json"
    if old.exists():  # a part not re-run keeps its last result (each part records its own command and load)
        prev = json.loads(old.read_text())
        data.update({p: prev[p] for p in ("memory", "breakdown") if p in prev and p not in a.part})
    path = write_result("train_memory", data)
    data = json.loads(path.read_text())
    print(render(data))
    if not a.no_doc:
        update_doc_section("train_memory", render(data))


if __name__ == "__main__":
    main()
