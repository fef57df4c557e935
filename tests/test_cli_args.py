"""Walk every subcommand's numeric flags with nan, inf, 0, -1, huge values, integers beyond int64, fractions where an
integer goes and words: exit 2 with one line, or accepted where the value is legal (the commented allow-lists below),
and never a traceback. Everything stops at argument parsing (fast); what a huge value does after parsing (the memory
check of sample / evaluate, a resume) is tested in tests/test_silent.py."""

from __future__ import annotations

import argparse
import functools

import pytest

from codeprior.cli import build_parser, main
from codeprior.commands.prior import SUB_ACTIONS, _action_parser
from codeprior.utils.argtypes import NUMERIC_TYPES, open_unit_float, top_p_float, unit_float

#: (command, flag) that accept 0: "0 = off / all / default" or a legal zero (seed, rate, probability)
ZERO_OK = {
    *(
        (c, "--seed")
        for c in (
            "prior",
            "sample",
            "train",
            "train-refine",
            "evaluate",
            "evaluate-tokenizer",
            "prior substitute",
            "classifier train",
            "tokenizer train",
            "tokenizer eval",
        )
    ),
    ("classifier train", "--weight-decay"),
    ("classifier train", "--label-smoothing"),
    ("sample", "--cfg-scale"),
    ("sample", "--temperature"),
    ("sample", "--coarse-temperature"),
    ("sample", "--top-k"),
    ("sample", "--refine-temperature"),
    ("sample", "--refine-top-k"),
    ("tokenize", "--num-workers"),
    *(("sample", f) for f in ("--gsd-neighbors", "--gsd-prob-gap", "--gsd-embed-dist")),  # 0 = no group
    *((c, "--threads") for c in ("pipeline", "demo")),
    *((c, "--num-images") for c in ("evaluate-tokenizer", "tokenizer eval")),  # 0 = all
    *(
        (c, "--threads")
        for c in ("sample", "tokenize", "evaluate", "evaluate-tokenizer", "tokenizer eval", "prior substitute")
    ),
    ("tokenizer train", "--l1-weight"),
    ("tokenizer train", "--restart-every"),
    ("tokenizer train", "--threads"),
    *(
        (c, f)
        for c in ("train", "train-refine")
        for f in (
            "--weight-decay",
            "--beta1",
            "--beta2",
            "--grad-clip",
            "--warmup-steps",
            "--min-lr-ratio",
            "--ema",
            "--dropout",
            "--class-dropout",
            "--drop-path",
            "--threads",
            "--val-every",
            "--val-batches",
            "--keep-ckpts",
        )
    ),
    ("train", "--lam"),
    ("train", "--loss-chunk"),  # 0 = full logits
    ("train", "--snce-tau"),  # 0 = the codebook's own scale
    ("train", "--level-weights"),  # a level left out, as --lam 0
}
#: (command, flag) that accept -1
NEGATIVE_OK: set[tuple[str, str]] = set()
#: (command, flag) that accept a huge value (10**12, or 1e12 for a float), and why that is legal
HUGE_OK = {
    # the memory estimate refuses what does not fit before any work (tests/test_silent.py)
    # (--window also takes auto, so it is no numeric flag: tests/test_auto_window.py checks it)
    *(("sample", f) for f in ("--num-samples", "--batch-size", "--chunk-size")),
    ("train", "--loss-chunk"),  # a chunk larger than the batch's tokens is one chunk
    # a cap or a count that means "all" (or "never") when larger than the data: top-k, neighbours, subsets,
    # the first N images, a batch larger than the set, log / validate / checkpoint intervals, checkpoints kept
    *(("sample", f) for f in ("--top-k", "--refine-top-k", "--latent-k", "--gsd-neighbors")),
    *(("evaluate", f) for f in ("--batch-size", "--kid-subset-size", "--prdc-max", "--nearest-k")),
    ("evaluate-tokenizer", "--batch-size"),
    ("evaluate-tokenizer", "--num-images"),
    *(("prior substitute", f) for f in ("--batch-size", "--num-images")),
    ("tokenize", "--batch-size"),
    ("tokenize", "--limit"),  # a subset of N images per split: N >= the split keeps every image
    *(("tokenize import-llamagen", f) for f in ("--num-images", "--chunk-size")),
    ("tokenize check", "--num-images"),
    ("tokenizer eval", "--batch-size"),
    ("tokenizer eval", "--num-images"),
    *(("tokenizer train", f) for f in ("--batch-size", "--ckpt-every", "--restart-every")),
    *(
        (c, f)
        for c in ("train", "train-refine")
        for f in ("--log-every", "--val-every", "--val-batches", "--ckpt-every", "--keep-ckpts", "--stop-after-steps")
    ),
    # how much work: runs as long as asked (a week of GPU time is what the tool is for)
    *(
        (c, f)
        for c in ("train", "train-refine")
        for f in ("--max-steps", "--epochs", "--warmup-steps", "--global-batch", "--grad-accum")
    ),
    ("tokenizer train", "--steps"),
    ("classifier train", "--epochs"),
    ("classifier train", "--batch-size"),  # a batch larger than the split is the split
    ("evaluate", "--kid-subsets"),
    ("prior substitute", "--draws"),
    # scales with no natural bound (a huge guidance scale or temperature is well defined; a huge lr diverges, and
    # the non-finite loss then stops the run, naming the step: tests/test_silent.py)
    *(
        ("sample", f)
        for f in (
            "--cfg-scale",
            "--temperature",
            "--coarse-temperature",
            "--refine-temperature",
            "--latent-delta",
            "--gsd-prob-gap",
            "--gsd-embed-dist",
        )
    ),
    *((c, f) for c in ("train", "train-refine") for f in ("--lr", "--weight-decay", "--grad-clip")),
    ("train", "--lam"),
    *(("tokenizer train", f) for f in ("--lr", "--l1-weight")),
    *(("classifier train", f) for f in ("--lr", "--weight-decay")),
    # checked against the codebook at run time (k <= codes; k = codes / rate >= 1): one line, exit 2
    ("prior", "--k"),
    ("prior", "--compression-rate"),
    ("prior", "--rates"),
    ("train", "--snce-k"),  # K <= codebook size, checked when the table is built: one line, exit 2
    ("train", "--snce-tau"),  # a huge temperature is well defined (uniform weights over the K codes)
    ("train", "--level-weights"),  # a scale, as --lam
}


@functools.lru_cache(maxsize=1)
def _parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    out: list[tuple[str, argparse.ArgumentParser]] = []

    def walk(name: str, p: argparse.ArgumentParser) -> None:
        out.append((name, p))
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for sub, sp in a.choices.items():
                    walk(f"{name} {sub}".strip(), sp)

    walk("", build_parser())
    for name, action in SUB_ACTIONS.items():
        out.append((f"prior {name}", _action_parser("codeprior prior", action)))
    return [(n, p) for n, p in out if n]


def _numeric(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in p._actions if a.option_strings and (a.type in NUMERIC_TYPES or a.type in (int, float))]


def _valid(a: argparse.Action) -> str:
    return "0.5" if a.type in (open_unit_float, unit_float, top_p_float) else "1"


def _base_argv(name: str, p: argparse.ArgumentParser, skip: argparse.Action) -> list[str]:
    """The command words plus dummies for every required argument except ``skip``."""
    argv = name.split()
    groups = [g for g in p._mutually_exclusive_groups if g.required]
    for a in p._actions:
        if a is skip or isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        group = next((g for g in groups if a in g._group_actions), None)
        if group is not None:
            if skip in group._group_actions or a is not group._group_actions[0]:
                continue
        elif not a.required and a.option_strings:
            continue
        if not a.option_strings:
            if a.nargs in ("?", "*"):
                continue
            argv.append("X")
            continue
        value = str(a.choices[0]) if a.choices else (_valid(a) if a.type in NUMERIC_TYPES else "X")
        argv += [a.option_strings[0], value] if a.nargs != 0 else [a.option_strings[0]]
    return argv


CASES = [(n, a.option_strings[0], a) for n, p in _parsers() for a in _numeric(p)]


def test_walk_covers_every_command_with_numbers():
    names = {n for n, _, _ in CASES}
    assert {
        "prior",
        "prior inspect",
        "prior substitute",
        "train",
        "train-refine",
        "sample",
        "tokenize",
        "tokenize check",
        "evaluate",
        "evaluate-tokenizer",
        "classifier train",
        "tokenizer train",
        "tokenizer eval",
    } - {"prior inspect"} <= names
    flags = {(m, g) for m, g, _ in CASES}
    assert all((n, f) in flags for n, f in ZERO_OK), "stale ZERO_OK entry"
    assert all((n, f) in flags for n, f in HUGE_OK), [e for e in HUGE_OK if e not in flags]


@pytest.mark.parametrize(
    "name,flag,action",
    CASES,
    ids=[f"{n}:{f}" for n, f, _ in CASES],
)
def test_numeric_flag_values(name, flag, action, capsys):
    assert action.type in NUMERIC_TYPES, f"{name} {flag}: use a type from codeprior.utils.argtypes"
    parser = dict(_parsers())[name]
    base = _base_argv(name, parser, action)
    is_int = "int" in getattr(action.type, "__name__", "")
    huge = "1000000000000" if is_int else "1e12"
    values = ["nan", "inf", "-inf", "0", "-1", "abc", "", "1e999", huge, str(2**63), "1_0x"]
    values += ["1.5", "1e3"] if is_int else []  # a fraction, or a float spelling, where an integer goes
    for value in values:
        ok = (
            (value == "0" and (name, flag) in ZERO_OK)
            or (value == "-1" and (name, flag) in NEGATIVE_OK)
            or (value == huge and (name, flag) in HUGE_OK)
            or (value == str(2**63) and not is_int and (name, flag) in HUGE_OK)
        )
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            (parser.parse_args(base[len(name.split()) :] + [flag, value]) if ok else main(base + [flag, value]))
            raise SystemExit(0)
        err = capsys.readouterr().err
        assert "Traceback" not in err
        if ok:
            assert e.value.code == 0, f"{name} {flag} {value}: {err}"
        else:
            assert e.value.code == 2, f"{name} {flag} {value} accepted"
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("codeprior: error: ") and flag in lines[0], lines
    # a plain valid value parses
    parser.parse_args(base[len(name.split()) :] + [flag, _valid(action)])


def test_every_subcommand_has_examples():
    missing = [n for n, p in _parsers() if "examples" not in p.format_help()]
    assert not missing, missing


def test_tokenize_usage_shows_required_flags(capsys):
    with pytest.raises(SystemExit):
        main(["tokenize", "--help"])
    assert "usage: codeprior tokenize --tokenizer CKPT --data DATA --out DIR" in capsys.readouterr().out


def test_aliases_for_consistent_spelling():
    p = dict(_parsers())
    assert p["tokenizer eval"].parse_args(["--tokenizer", "t", "--vq-model", "VQ-16", "--json", "o"]).config == "VQ-16"
    assert p["tokenize check"].parse_args(["d", "--tokenizer", "t", "--num", "3"]).n == 3
    for name in ("sample", "tokenize", "evaluate", "evaluate-tokenizer", "train"):
        flags = {s for a in p[name]._actions for s in a.option_strings}
        assert {"--threads", "--no-progress"} <= flags, name


def test_every_output_flag_is_checked_before_work():
    """Every --out / --json / --export-* / --grid that names a file is declared to codeprior.utils.paths."""
    names = ("--out", "--json", "--export-iar", "--export-dcpe", "--grid")
    for name, p in _parsers():
        outs = [a.dest for a in p._actions if set(a.option_strings) & set(names) and a.nargs != 0]
        roles = p.get_default("path_roles")
        declared = set(roles.outputs) if roles else set()
        assert set(outs) <= declared, f"{name}: {sorted(set(outs) - declared)} not declared"
