"""`codeprior pipeline CONFIG.yaml`, `codeprior demo` and `codeprior report RUN`."""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path

from codeprior.errors import CodepriorError
from codeprior.utils.argtypes import threads_int, workers_int
from codeprior.utils.extras import needs_extra
from codeprior.utils.paths import declare_paths

if typing.TYPE_CHECKING:
    from codeprior.pipeline import PipelineConfig

STAGE_HELP = (
    "Stages, in order: data, tokenizer, priors, tokenize, train-<variant>... (train-<variant>-seedK with train.seeds), "
    "classifier, train-refine (train-refine-<prior> when several priors have coarse variants), tokenizer-eval, "
    "substitution, sample-<variant>... (with FID vs step over the training's snapshots), evaluate, report"
)


def _common(p: argparse.ArgumentParser, default_out: str, out_help: str) -> None:
    p.add_argument(
        "--out",
        default=default_out,
        metavar="RUN_DIR",
        help=f"run folder, one sub-folder per stage (default: {out_help})",
    )
    p.add_argument(
        "--force",
        action="append",
        default=[],
        metavar="STAGE",
        help="redo STAGE and everything downstream of it (repeatable)",
    )
    p.add_argument("--until", metavar="STAGE", help="run only STAGE and the stages it needs")
    p.add_argument("--dry-run", action="store_true", help="print what would run, skip or resume, and exit")
    p.add_argument("--device", help="override the config's device (auto, cpu, cuda, cuda:N)")
    p.add_argument(
        "--threads",
        type=threads_int,
        help="override the config's torch CPU threads per stage (0 = torch's default, as every command's --threads)",
    )
    p.add_argument(
        "--jobs",
        type=workers_int,
        help="override the config's number of stages run at the same time (CPU); results do not depend on it",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pipeline",
        help="run the stage pipeline from a YAML config (tokenizer -> priors -> training -> samples -> report)",
        description="Run every stage of a config in order, each in RUN_DIR/<stage>/ with a manifest.json. "
        "Re-running skips finished stages whose config and inputs are unchanged, resumes an interrupted one, and "
        "--force STAGE redoes a stage and everything after it. " + STAGE_HELP + ". "
        "Config reference: docs/pipeline.md (or --help-config).",
        epilog="examples:\n  codeprior pipeline configs/demo.yaml --out runs/demo\n"
        "  codeprior pipeline my.yaml --dry-run                # what would run, skip or resume\n"
        "  codeprior pipeline my.yaml --force train-token      # redo a stage and everything after it\n"
        "  codeprior pipeline my.yaml --jobs 2 --threads 1     # two stages at a time, one thread each\n"
        "  codeprior pipeline --help-config",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", nargs="?", metavar="CONFIG.yaml", help="pipeline config (see configs/demo.yaml)")
    _common(p, "", "runs/<config file name>")
    p.add_argument("--help-config", action="store_true", help="print every config key with its type and default")
    declare_paths(p, outputs={"out": "dir"}, inputs=("config",))
    p.set_defaults(func=run_pipeline_cmd)
    needs_extra(p, "pipeline")

    d = subparsers.add_parser(
        "demo",
        help="the end-to-end Fashion-MNIST demo (= codeprior pipeline configs/demo.yaml --out runs/demo)",
        description="Fashion-MNIST -> small VQ tokenizer -> k-means and DCPE priors -> GPT-tiny trained as token "
        "baseline and coarse-to-fine with k-means and with DCPE (the full preset adds cluster-CE and 3 seeds) -> "
        "samples -> metrics -> RUN_DIR/report.html, which opens with FID against step and a verdict. The README "
        "gives the measured time of each preset; re-running skips what is done. " + STAGE_HELP + ".",
        epilog="examples:\n  codeprior demo                       # = make demo, into runs/demo\n"
        "  codeprior demo --preset full         # more steps, seeds and variants, into runs/demo-full\n"
        "  codeprior demo --jobs 1              # the same results, one stage at a time\n"
        "  codeprior demo --print-config > my.yaml && codeprior pipeline my.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(d, "", "runs/demo, or runs/demo-full with --preset full")
    d.add_argument(
        "--preset",
        choices=("quick", "full"),
        default="quick",
        help="quick: make demo's run (default --out runs/demo); full: more steps, 3 seeds and every "
        "variant (default --out runs/demo-full); the README gives both durations",
    )
    d.add_argument("--print-config", action="store_true", help="print the demo config (YAML) and exit")
    declare_paths(d, outputs={"out": "dir"})
    d.set_defaults(func=run_demo_cmd)
    needs_extra(d, "pipeline")

    r = subparsers.add_parser(
        "report",
        help="(re)write RUN/report.html and report.md from a pipeline run folder",
        description="Rebuild the report of a pipeline run from its stage manifests and outputs (runs nothing); "
        "also writes RUN_DIR/results.md and results.json (the table and verdict the README quotes).",
        epilog="examples:\n  codeprior report runs/demo\n"
        "  codeprior report runs/demo --update-readme README.md   # refresh the README's results block",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("run_dir", metavar="RUN_DIR")
    r.add_argument(
        "--update-readme",
        metavar="README.md",
        help="replace the block between <!-- demo-results:begin --> and <!-- demo-results:end --> with "
        "this run's results.md and copy results.json to docs/results/<run name>.json beside it",
    )
    r.set_defaults(func=run_report_cmd)
    needs_extra(r, "pipeline")


# codeprior.pipeline and codeprior.report are imported inside the command functions, not at the top: every command
# module is imported to build `codeprior --help`, and the pipeline pulls in torch and every stage.


def _execute(cfg: PipelineConfig, args: argparse.Namespace, config_file: str | None = None) -> int:
    from codeprior.pipeline import run_pipeline

    if args.device:
        cfg.device = args.device
    if args.threads is not None:
        cfg.threads = args.threads
    if args.jobs is not None:
        cfg.jobs = args.jobs
    if args.dry_run:  # reads only: no lock, and no folder created
        run_pipeline(cfg, args.out, force=args.force, until=args.until, dry_run=True, config_file=config_file)
        return 0
    from codeprior.utils.lock import folder_lock

    with folder_lock(args.out):  # one writer per run folder; forked stage jobs share the parent's lock
        run_pipeline(cfg, args.out, force=args.force, until=args.until, dry_run=False, config_file=config_file)
    return 0


def run_pipeline_cmd(args: argparse.Namespace) -> int:
    from codeprior.pipeline import config_schema_markdown, load_config

    if args.help_config:
        sys.stdout.write(config_schema_markdown())
        return 0
    if not args.config:
        raise CodepriorError("pipeline: a CONFIG.yaml argument is required (see configs/demo.yaml)")
    if not args.out:
        args.out = str(Path("runs") / Path(args.config).stem)
    cfg = load_config(args.config)
    return _execute(cfg, args, args.config)


def run_demo_cmd(args: argparse.Namespace) -> int:
    from codeprior.pipeline import demo_config, demo_config_text

    if args.print_config:
        sys.stdout.write(demo_config_text(args.preset))
        return 0
    if not args.out:
        args.out = "runs/demo" if args.preset == "quick" else f"runs/demo-{args.preset}"
    return _execute(demo_config(args.preset), args)


def run_report_cmd(args: argparse.Namespace) -> int:
    from codeprior.pipeline.stages.evaluate import metrics_table_text
    from codeprior.pipeline.stages.report import write_run_report
    from codeprior.verdict import update_readme

    html_path, md_path = write_run_report(args.run_dir)
    print(f"report: {html_path}\n        {md_path}\n")
    print(metrics_table_text(args.run_dir))
    if args.update_readme:
        kept = update_readme(args.update_readme, args.run_dir)
        print(f"\n{args.update_readme}: results block updated; run results kept in {kept}")
    return 0
