"""How long the CLI takes before it does anything: ``codeprior --help``, ``codeprior COMMAND --help`` for every
command, and one real quick command (a bad-input refusal before any work: ``sample --out`` onto its ``--ckpt``,
exit 2, one line), against ``python -c pass``.

Target (issue 26, item 3): ``codeprior --help`` <= 0.3 s, torch not imported.

    .venv/bin/python -m benchmarks.cli_startup [--rounds 3] [--before REV] [--commands train,sample] [--src DIR]

Every run is a fresh interpreter (``python -m codeprior ...`` with this tree's ``src``, or ``--src DIR``, as
``PYTHONPATH``); the rounds interleave every case (and, with ``--before REV``, the same case on git revision REV's
``src``, exported to a temporary folder) with the reference, so all see the same machine load. One extra untimed
run per case says whether torch was imported.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import ROOT, SMOKE_HELP, load_note, start_smoke, update_doc_section, write_result
from benchmarks._common import command as bench_command

#: runs ``codeprior ARGV`` through cli.main in this interpreter; prints its exit code and whether torch was imported
_PROBE = r"""
import contextlib, io, json, sys
from codeprior.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    try:
        rc = main(sys.argv[1:])
    except SystemExit as e:
        rc = e.code
print(json.dumps({"rc": rc, "torch": "torch" in sys.modules}))
"""


def commands(src: Path) -> list[str]:
    """The top-level commands of the CLI in ``src`` (asked in a subprocess: that tree's code, not ours)."""
    code = (
        "import argparse, json\nfrom codeprior.cli import build_parser\n"
        "print(json.dumps([n for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction) "
        "for n in a.choices]))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=_env(src), capture_output=True, text=True, check=True)
    return list(json.loads(out.stdout))


def _env(src: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(src), "CODEPRIOR_NO_PROGRESS": "1"}


def cases(cmds: list[str], scratch: Path) -> dict[str, list[str] | None]:
    """Case name -> argv after ``python -m codeprior`` (None: the reference, ``python -c pass``)."""
    out: dict[str, list[str] | None] = {"python -c pass": None, "codeprior --help": ["--help"]}
    out.update({f"codeprior {c} --help": [c, "--help"] for c in cmds})
    ckpt = scratch / "model.pt"  # an empty file: the refusal comes before anything reads it
    ckpt.touch()
    out["codeprior sample (--out onto --ckpt: exit 2)"] = [
        "sample",
        *("--ckpt", str(ckpt), "--tokenizer", str(ckpt), "--num-samples", "1", "--out", str(ckpt)),
    ]
    return out


def run_once(src: Path, argv: list[str] | None) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of one fresh interpreter running the case."""
    cmd = [sys.executable, "-c", "pass"] if argv is None else [sys.executable, "-m", "codeprior", *argv]
    r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(cmd, env=_env(src), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def probe(src: Path, argv: list[str] | None) -> dict[str, Any]:
    if argv is None:
        return {"rc": 0, "torch": False}
    out = subprocess.run([sys.executable, "-c", _PROBE, *argv], env=_env(src), capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def export_src(rev: str, dest: Path) -> Path:
    """``src/`` of git revision ``rev`` under ``dest``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest / "src"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median over them; default 3)")
    ap.add_argument("--before", default=None, metavar="REV", help="also time git revision REV's src (e.g. main)")
    ap.add_argument("--src", type=Path, default=ROOT / "src", help="the src folder to time (default: this tree's)")
    ap.add_argument("--commands", default=None, help="comma-separated commands to time --help of (default: all)")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite the docs/benchmarks.md section")
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = ap.parse_args()
    if args.smoke:  # one command, one round, this tree only
        start_smoke()
        args.rounds, args.before, args.commands = 1, None, "train"

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        trees = {"after": args.src.resolve()}
        if args.before:
            trees = {"before": export_src(args.before, scratch), **trees}
        cmds = commands(trees["after"])
        if args.commands:
            unknown = sorted(set(args.commands.split(",")) - set(cmds))
            if unknown:
                ap.error(f"--commands: unknown {', '.join(unknown)} (known: {', '.join(cmds)})")
            cmds = [c for c in cmds if c in args.commands.split(",")]
        todo = cases(cmds, scratch)
        times: dict[str, dict[str, list[tuple[float, float]]]] = {c: {t: [] for t in trees} for c in todo}
        for r in range(args.rounds):
            for case, argv in todo.items():
                order = list(trees) if r % 2 == 0 else list(trees)[::-1]
                for tree in order:
                    if argv is None and tree != "after":
                        continue  # one reference: the interpreter is the same for both trees
                    times[case][tree].append(run_once(trees[tree], argv))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        probes = {c: {t: probe(trees[t], argv) for t in trees} for c, argv in todo.items()}
    load_after = os.getloadavg()[0]

    ref = statistics.median(w for w, _ in times["python -c pass"]["after"])
    ref_cpu = statistics.median(c for _, c in times["python -c pass"]["after"])
    rows = []
    for case in todo:
        row: dict[str, Any] = {"case": case}
        for tree in trees:
            ts = times[case][tree]
            if not ts:
                continue
            med, cpu = statistics.median(w for w, _ in ts), statistics.median(c for _, c in ts)
            row[tree] = {
                "median_s": med,
                "runs_s": [w for w, _ in ts],
                "vs_python": med / ref,
                "cpu_median_s": cpu,
                "cpu_vs_python": cpu / ref_cpu if ref_cpu else None,
                **probes[case][tree],
            }
        if "before" in row and case != "python -c pass":
            row["after_vs_before"] = row["after"]["median_s"] / row["before"]["median_s"]
        rows.append(row)
    command = bench_command("cli_startup")
    note = load_note(load_before, load_after)
    path = write_result(
        "cli_startup",
        {"command": command.strip(), "rounds": args.rounds, "before": args.before, "rows": rows, "load": note},
    )
    print(f"wrote {path}")
    top = next(r for r in rows if r["case"] == "codeprior --help")["after"]
    print(
        f"codeprior --help: {top['median_s']:.3f} s median ({top['vs_python']:.1f}x python -c pass, {ref:.3f} s); "
        f"torch imported: {top['torch']}"
    )
    if not args.no_doc:
        update_doc_section("cli_startup", _markdown(command.strip(), rows, list(trees), ref, note))


def _markdown(command: str, rows: list[dict[str, Any]], trees: list[str], ref: float, note: str) -> str:
    from benchmarks._common import machine

    head = "| case | " + " | ".join(f"{t}: wall (s) | {t}: CPU (s) | {t}: wall / python | {t}: torch" for t in trees)
    head += " | after / before (wall) |" if "before" in trees else " |"
    lines = [head, "|---|" + "---:|---:|---:|---|" * len(trees) + ("---:|" if "before" in trees else "")]
    for r in rows:
        cells = []
        for t in trees:
            d = r.get(t)
            cells += (
                [
                    f"{d['median_s']:.3f}",
                    f"{d['cpu_median_s']:.3f}",
                    f"{d['vs_python']:.1f}x",
                    "yes" if d["torch"] else "no",
                ]
                if d
                else ["", "", "", ""]
            )
        if "before" in trees:
            cells.append(f"{r['after_vs_before']:.2f}x" if "after_vs_before" in r else "")
        lines.append(f"| {r['case']} | " + " | ".join(cells) + " |")
    top = next(r for r in rows if r["case"] == "codeprior --help")["after"]
    verdict = "meets" if top["median_s"] <= 0.3 and not top["torch"] else "misses"
    prior = next((r["after"] for r in rows if r["case"] == "codeprior prior --help"), None)
    why = (
        " Registering `prior` (its `--method` choices from `codeprior.priors.extract`) still imports torch in this "
        "tree, and every command builds the whole parser, so every `codeprior` row pays for torch: the dcpe branch "
        "makes that registration lazy."
        if prior and prior["torch"]
        else ""
    )
    return f"""## CLI start-up (`--help` and a refusal before any work)

Command: `{command}` ({time.strftime("%Y-%m-%d %H:%M")}). Machine: {machine()}. {note}

Each run is a fresh `python -m codeprior ...`: wall time of the whole process and its CPU time (user + system, the
steadier figure on a loaded machine), medians over the rounds, which interleave every case and tree with the
reference `python -c pass` ({ref:.3f} s median in this run). "torch": whether the command imported it (one untimed
run through `cli.main`).

{chr(10).join(lines)}

Target: `codeprior --help` <= 0.3 s without torch: this run {verdict} it ({top["median_s"]:.3f} s,
{top["vs_python"]:.1f}x `python -c pass`).{why}
"""


if __name__ == "__main__":
    main()
