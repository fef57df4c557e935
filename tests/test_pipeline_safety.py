"""The pipeline's run folder is codeprior's: a stage removes only what its record says it wrote, a foreign file is a
one-line refusal before any work, an input inside the run folder is read where it is (or refused where a stage would
rewrite it); a moved run folder keeps working; and every value the CLI refuses is refused in a config, before the
first stage (``--dry-run`` included)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

from codeprior.errors import CodepriorError
from codeprior.pipeline import Stage, build_stages, demo_config, load_config, read_stage_manifest, run_stages
from codeprior.pipeline.validation import value_bounds
from codeprior.utils import argtypes


def quiet(msg: str) -> None:
    pass


# --------------------------------------------------------------------------------------------------- engine
def _stages(outputs: tuple[str, ...] = ()) -> list[Stage]:
    """a -> b: each writes out.txt (a's text + its name) and a folder of its own."""

    def body(name: str):
        def run(ctx):
            text = "".join((ctx.stage_dir(d) / "out.txt").read_text() for d in sorted(ctx.upstream)) + name
            (ctx.dir / "out.txt").write_text(text)
            (ctx.dir / "sub").mkdir(exist_ok=True)
            (ctx.dir / "sub" / "x.bin").write_bytes(b"x")
            return {"len": len(text)}

        return run

    return [Stage("a", body("a"), outputs=outputs), Stage("b", body("b"), ("a",), outputs=outputs)]


def test_record_lists_what_the_stage_wrote_and_a_redo_removes_only_that(tmp_path):
    run = tmp_path / "run"
    run_stages(_stages(), run, log=quiet)
    assert read_stage_manifest(run / "b")["files"] == ["out.txt", "sub"]
    (run / "notes.txt").write_text("mine")  # a foreign file in the run folder itself: left alone
    (run / "b" / "thesis.tex").write_text("mine")
    with pytest.raises(CodepriorError, match=r"run/b/thesis.tex: not written by stage b") as e:
        run_stages(_stages(), run, force=["b"], log=quiet)
    assert "\n" not in str(e.value)
    assert (run / "b" / "thesis.tex").read_text() == "mine" and (run / "b" / "out.txt").read_text() == "ab"
    # a stage that is skipped touches nothing: a foreign file in its folder is no obstacle
    assert [r.action for r in run_stages(_stages(), run, log=quiet)] == ["skipped", "skipped"]
    (run / "b" / "thesis.tex").unlink()
    old = read_stage_manifest(run / "b")["run_id"]
    res = run_stages(_stages(), run, force=["b"], log=quiet)
    assert [r.action for r in res] == ["skipped", "ran"] and read_stage_manifest(run / "b")["run_id"] != old
    assert (run / "b" / "out.txt").read_text() == "ab" and (run / "notes.txt").read_text() == "mine"


def test_a_file_in_a_new_stage_folder_is_refused_before_any_stage_runs(tmp_path):
    run = tmp_path / "run"
    (run / "b").mkdir(parents=True)
    (run / "b" / "data.csv").write_text("mine")
    with pytest.raises(CodepriorError, match=r"run/b/data.csv: not written by stage b"):
        run_stages(_stages(), run, log=quiet)
    assert not (run / "a").exists()  # refused before the first stage
    (run / "b" / "data.csv").unlink()
    (run / "b").rmdir()
    (run / "b").write_text("a file where a stage folder goes")
    with pytest.raises(CodepriorError, match=r"run/b: not a folder"):
        run_stages(_stages(), run, log=quiet)


def test_a_manifest_that_is_not_the_stage_record_is_refused(tmp_path):
    run = tmp_path / "run"
    (run / "a").mkdir(parents=True)
    (run / "a" / "manifest.json").write_text('{"my": "own file"}')
    with pytest.raises(CodepriorError, match=r"run/a/manifest.json: not the record of stage a"):
        run_stages(_stages(), run, log=quiet)
    assert json.loads((run / "a" / "manifest.json").read_text()) == {"my": "own file"}


def test_inputs_inside_the_run_folder_are_read_where_they_are_or_refused(tmp_path):
    run = tmp_path / "run"
    run_stages(_stages(), run, log=quiet)
    cfg = run / "b" / "cfg.yaml"
    cfg.write_text("name: x\n")
    res = run_stages(_stages(), run, force=["a"], inputs={"the config file": str(cfg)}, log=quiet)
    assert [r.action for r in res] == ["ran", "ran"]
    assert cfg.read_text() == "name: x\n" and "cfg.yaml" not in read_stage_manifest(run / "b")["files"]
    # an input in what the stage itself writes would be replaced by the stage: refused, naming both
    with pytest.raises(CodepriorError, match=r"the checkpoint .*run/b/sub/x.bin: lies in .*run/b/sub, which stage b"):
        inputs = {"the config file": str(cfg), "the checkpoint": str(run / "b" / "sub" / "x.bin")}
        run_stages(_stages(), run, force=["b"], inputs=inputs, log=quiet)
    assert (run / "b" / "sub" / "x.bin").read_bytes() == b"x"
    with pytest.raises(CodepriorError, match=r"lies inside data.data_dir"):
        run_stages(_stages(), run, inputs={"data.data_dir": str(tmp_path)}, log=quiet)


def test_declared_outputs_and_temporaries_are_the_stage_own_after_a_kill(tmp_path):
    """A process killed mid-stage leaves a ``running`` record without its files: the names the stage declares
    (``Stage.outputs``) and atomic-write temporaries are still its own, so a redo removes them."""
    run = tmp_path / "run"
    run_stages(_stages(("out.txt", "sub")), run, log=quiet)
    m = read_stage_manifest(run / "b")
    m.pop("_dir")
    m.update(status="running", files=[])
    (run / "b" / "manifest.json").write_text(json.dumps(m))
    (run / "b" / ".out.txt.ab12cd34.tmp").write_text("half")
    res = run_stages(_stages(("out.txt", "sub")), run, force=["b"], log=quiet)
    assert [r.action for r in res] == ["skipped", "ran"]
    assert sorted(p.name for p in (run / "b").iterdir()) == ["manifest.json", "out.txt", "sub"]


def test_files_a_stage_writes_in_the_run_folder_are_its_own_only_with_its_record(tmp_path):
    """The report stage writes RUN/report.html: a report.html there without the stage's record is refused."""
    run = tmp_path / "run"

    def report(ctx):
        (ctx.run_dir / "report.html").write_text("report")

    stages = [Stage("report", report, run_outputs=("report.html",))]
    run.mkdir()
    (run / "report.html").write_text("my own page")
    with pytest.raises(CodepriorError, match=r"run/report.html: not written by stage report"):
        run_stages(stages, run, log=quiet)
    assert (run / "report.html").read_text() == "my own page"
    (run / "report.html").unlink()
    run_stages(stages, run, log=quiet)
    run_stages(stages, run, force=["report"], log=quiet)  # its own now: rewritten
    assert (run / "report.html").read_text() == "report"
    with pytest.raises(CodepriorError, match=r"the config file .*report.html: is .*report.html, which stage report"):
        run_stages(stages, run, force=["report"], inputs={"the config file": str(run / "report.html")}, log=quiet)


def test_evaluate_finds_the_run_classifier_through_a_relative_record(tmp_path):
    from codeprior.commands.evaluate import _classifier_of_run

    (tmp_path / "classifier").mkdir()
    (tmp_path / "classifier" / "classifier.pt").write_bytes(b"x")
    m = {"stage": "classifier", "status": "done", "metrics": {"checkpoint": "classifier/classifier.pt"}}
    (tmp_path / "classifier" / "manifest.json").write_text(json.dumps(m))
    found = _classifier_of_run(str(tmp_path / "sample-token" / "samples.npz"))
    assert found is not None and Path(found) == (tmp_path / "classifier" / "classifier.pt").resolve()


# --------------------------------------------------------------------------------------------------- real stages
@pytest.fixture
def tiny_run(tmp_path, make_idx_dataset, tiny_pipeline):
    """A run folder R whose config (R/data/cfg.yaml) and tokenizer (R/tokenizer/vq.pt, 16 codes) live inside its
    stage folders, on 40 random 28x28 training images; returns ``(R, config path)``."""
    from codeprior.models import save_vq
    from codeprior.models.vq import VQModel, get_vq_config

    make_idx_dataset(tmp_path / "idx", n_train=40, n_test=20)
    run = tmp_path / "R"
    (run / "data").mkdir(parents=True)
    (run / "tokenizer").mkdir()
    vq = VQModel(get_vq_config("VQ-fmnist", codebook_size=16, ch=16, z_channels=16, norm_groups=4, ch_mult=[1, 2, 2]))
    save_vq(vq, run / "tokenizer" / "vq.pt")
    cfg = tiny_pipeline(tmp_path / "idx")
    cfg["tokenizer"] = {"checkpoint": "../tokenizer/vq.pt", "num_recon": 8, "num_images": 20}
    cfg["priors"] = {"k": 4, "methods": ["kmeans"]}
    cfg["train"] = {"variants": [{"name": "token"}]}
    (run / "data" / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return run, run / "data" / "cfg.yaml"


def _cli(*args: str) -> int:
    from codeprior.cli import main

    return main(["pipeline", *map(str, args)])


def _tree(run: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    return {n: (run / n).read_bytes() for n in names}


OUTPUTS = ("data/examples.npz", "tokenizer/reconstructions.png", "tokenize/codes/train/codes.npy", "priors/sizes.json")


def test_foreign_files_in_every_stage_folder_stop_the_run_before_any_work(tiny_run, capsys):
    run, cfg = tiny_run
    names = [s.name for s in build_stages(load_config(cfg), "cpu")]
    for n in names:
        (run / n).mkdir(exist_ok=True)
        (run / n / "thesis.tex").write_text(n)
    (run / "notes.txt").write_text("mine")
    for extra in ((), ("--dry-run",), ("--until", "data")):
        assert _cli(cfg, "--out", run, *extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "R/data/thesis.tex: not written by stage data" in err
    assert not (run / "data" / "manifest.json").exists()  # no stage ran
    for n in names:
        assert (run / n / "thesis.tex").read_text() == n
    assert (run / "notes.txt").read_text() == "mine"
    assert (run / "data" / "cfg.yaml").is_file() and (run / "tokenizer" / "vq.pt").is_file()


def test_inputs_in_stage_folders_survive_reruns_and_force_gives_the_same_files(tiny_run):
    """The issue's case: a config in RUN/data/ and the tokenizer it points to in RUN/tokenizer/ are read where they
    are; --force redoes the stages, replaces only their own files (byte-identical), and leaves every other file."""
    run, cfg = tiny_run
    vq_bytes = (run / "tokenizer" / "vq.pt").read_bytes()
    assert _cli(cfg, "--out", run, "--until", "priors") == 0
    assert _cli(cfg, "--out", run, "--until", "tokenize") == 0
    before = _tree(run, OUTPUTS)
    assert read_stage_manifest(run / "tokenizer")["files"] == ["reconstructions.png"]
    assert "cfg.yaml" not in read_stage_manifest(run / "data")["files"]
    (run / "notes.txt").write_text("mine")
    assert _cli(cfg, "--out", run, "--until", "priors", "--force", "data") == 0
    assert _tree(run, OUTPUTS) == before
    assert (run / "tokenizer" / "vq.pt").read_bytes() == vq_bytes and (run / "notes.txt").read_text() == "mine"
    assert yaml.safe_load(cfg.read_text())["tokenizer"]["checkpoint"] == "../tokenizer/vq.pt"
    assert {
        m: read_stage_manifest(run / m)["status"] for m in ("data", "tokenizer", "tokenize", "priors")
    } == dict.fromkeys(("data", "tokenizer", "tokenize", "priors"), "done")
    # an interrupted stage resumes in place (its files kept) and ends with the same files
    m = read_stage_manifest(run / "priors")
    m.pop("_dir")
    m["status"] = "interrupted"
    (run / "priors" / "manifest.json").write_text(json.dumps(m))
    assert _cli(cfg, "--out", run, "--until", "priors") == 0
    assert read_stage_manifest(run / "priors")["attempts"] == 2 and _tree(run, OUTPUTS) == before


def test_moved_run_folder_keeps_working(tiny_run, capsys):
    run, cfg = tiny_run
    assert _cli(cfg, "--out", run, "--until", "tokenize") == 0
    tok = read_stage_manifest(run / "tokenize")
    assert tok["metrics"]["codes"] == "tokenize/codes"  # stored relative to the run folder
    assert read_stage_manifest(run / "tokenizer")["metrics"]["checkpoint"] == "tokenizer/vq.pt"
    before = _tree(run, OUTPUTS[:3])
    moved = run.parent / "R2"
    shutil.move(run, moved)
    capsys.readouterr()
    assert _cli(moved / "data" / "cfg.yaml", "--out", moved, "--dry-run", "--until", "priors") == 0
    plan = [line.split() for line in capsys.readouterr().out.strip().splitlines()]
    assert plan == [["skip", "data"], ["skip", "tokenizer"], ["run", "priors"]]
    assert _cli(moved / "data" / "cfg.yaml", "--out", moved, "--until", "priors") == 0
    assert read_stage_manifest(moved / "priors")["metrics"]["files"] == {"kmeans": "priors/kmeans.safetensors"}
    assert _tree(moved, OUTPUTS[:3]) == before
    assert not run.exists()


def test_a_run_folder_of_the_previous_format_still_resumes(tiny_run, tmp_path):
    """Records written before this change: absolute paths in the metrics, no ``files`` list. They read as they are,
    and a redo still removes the stage's declared outputs (and nothing else)."""
    run, cfg = tiny_run
    assert _cli(cfg, "--out", run, "--until", "tokenize") == 0
    before = _tree(run, OUTPUTS[:3])
    for stage in ("data", "tokenizer", "tokenize"):
        m = read_stage_manifest(run / stage)
        m.pop("_dir"), m.pop("files")
        for k, v in m["metrics"].items():
            if isinstance(v, str) and "/" in v and (run / v).exists():
                m["metrics"][k] = str((run / v).resolve())
        (run / stage / "manifest.json").write_text(json.dumps(m))
    assert read_stage_manifest(run / "tokenize")["metrics"]["codes"].startswith("/")
    assert _cli(cfg, "--out", run, "--until", "priors") == 0  # reads the absolute paths
    assert _cli(cfg, "--out", run, "--until", "tokenize", "--force", "tokenize") == 0  # removes its declared codes/
    assert _tree(run, OUTPUTS[:3]) == before
    assert read_stage_manifest(run / "tokenize")["metrics"]["codes"] == "tokenize/codes"
    # an old record's absolute path into its own stage folder is found after the run folder moved
    moved = tmp_path / "moved"
    shutil.move(run, moved)
    assert read_stage_manifest(moved / "tokenizer")["metrics"]["checkpoint"] == str((run / "tokenizer/vq.pt").resolve())
    assert _cli(moved / "data" / "cfg.yaml", "--out", moved, "--until", "priors", "--force", "priors") == 0


def test_k_larger_than_a_given_tokenizer_codebook_is_one_line(tiny_run, capsys):
    run, cfg = tiny_run
    data = yaml.safe_load(cfg.read_text())
    data["priors"] = {"k": 100}
    cfg.write_text(yaml.safe_dump(data))
    assert _cli(cfg, "--out", run, "--until", "priors") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "priors.k: 100 clusters for a codebook of 16 codes" in err


# --------------------------------------------------------------------------------------------------- config checks
def _cfg(tmp_path: Path, data: dict | str) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


@pytest.mark.parametrize(
    "text, match",
    [
        ("train:\n  steps: 3\ntrain:\n  lr: 0.1\n", r"duplicated key 'train' \(line 3, first given on line 1\)"),
        ("train:\n  steps: 3\n  steps: 4\n", r"duplicated key 'steps' \(line 3, first given on line 2\)"),
        ("sample:\n  decoder: {window: 3, window: 4}\n", r"duplicated key 'window'"),
    ],
)
def test_duplicated_yaml_keys_are_refused(tmp_path, text, match):
    with pytest.raises(CodepriorError, match=r"cfg.yaml: not valid YAML \(line \d\): " + match):
        load_config(_cfg(tmp_path, text))


@pytest.mark.parametrize(
    "data, match",
    [
        ({"train": {"model": "GPT-tny"}}, r"train.model: unknown model 'GPT-tny' \(known: GPT-tiny"),
        ({"refine": {"model": "Refine-huge"}}, r"refine.model: unknown model 'Refine-huge'"),
        ({"tokenizer": {"model": "VQ-99"}}, r"tokenizer.model: unknown model 'VQ-99'"),
        ({"priors": {"k": 100000}}, r"priors.k: 100000 clusters for a codebook of 4096 codes \(VQ-fmnist\)"),
        ({"train": {"variants": []}}, r"train.variants: empty"),
        ({"priors": {"methods": []}}, r"priors.methods: empty"),
        ({"seed": -1}, r"seed: expected an integer >= 0, got '-1'"),
        ({"num_workers": -2}, r"num_workers: expected an integer >= 0"),
        ({"threads": -1}, r"threads: expected an integer in 0\.\.1024"),  # 0: torch's default, as --threads 0
        ({"jobs": 0}, r"jobs: expected an integer in 1\.\.1024"),
        ({"jobs": 10**12}, r"jobs: expected an integer in 1\.\.1024"),
        ({"stage_threads": {"data": 0}}, r"stage_threads.data: expected an integer in 1\.\.1024"),
        ({"tokenizer": {"steps": -5}}, r"tokenizer.steps: expected an integer > 0"),
        ({"tokenize": {"batch_size": 0}}, r"tokenize.batch_size: expected an integer > 0"),
        ({"classifier": {"epochs": 0}}, r"classifier.epochs: expected an integer > 0"),
        ({"priors": {"k": 0}}, r"priors.k: expected an integer > 0"),
        ({"priors": {"compression_rate": 0.5}}, r"priors.compression_rate: expected a finite number >= 1"),
        ({"substitution": {"draws": -1}}, r"substitution.draws: expected an integer > 0"),
        ({"train": {"seeds": 0}}, r"train.seeds: expected an integer > 0, got '0'"),
        ({"train": {"ema": 1.0}}, r"train.ema: expected a finite number in \[0, 1\)"),
        ({"train": {"weight_decay": -0.1}}, r"train.weight_decay: expected a finite number >= 0"),
        (
            {"train": {"variants": [{"name": "t", "lam": -1.0}]}},
            r"train.variants\[0\].lam: expected a finite number >= 0",
        ),
        ({"train": {"torchrun": {"nnodes": 0}}}, r"train.torchrun.nnodes: expected an integer > 0"),
        ({"refine": {"lr": 0.0}}, r"refine.lr: expected a finite number > 0"),
        ({"sample": {"cfg_scale": -1.0}}, r"sample.cfg_scale: expected a finite number >= 0"),
        ({"sample": {"top_k": -1}}, r"sample.top_k: expected an integer >= 0"),
        ({"sample": {"top_p": 0.0}}, r"sample.top_p: expected a finite number in \(0, 1\]"),
        ({"evaluate": {"prdc_k": 0}}, r"evaluate.prdc_k: expected an integer > 0"),
        ({"sample": {"cfg_scale": math.inf}}, r"sample.cfg_scale: expected a finite number"),
        ({"train": {"lr": math.nan}}, r"train.lr: expected a finite number"),
        ({"sample": {"cfg_scale": "high"}}, r"sample.cfg_scale: expected a number, got 'high'"),
        ({"train": {"seeds": 1.5}}, r"train.seeds: expected an integer, got 1.5"),
        ({"seed": "zero"}, r"seed: expected an integer, got 'zero'"),
        ({"sample": {"decoder": {"decoder": "sjd", "window": "abc"}}}, r"sample.decoder.window: expected an integer"),
        ({"sample": {"decoder": {"window": 2.5}}}, r"sample.decoder.window: expected an integer, got 2.5"),
        ({"sample": {"decoder": {"window": True}}}, r"sample.decoder.window: expected an integer, got True"),
        ({"sample": {"decoder": {"window": -3}}}, r"sample.decoder.window: expected an integer > 0"),
        ({"sample": {"decoder": {"latent_delta": math.inf}}}, r"sample.decoder.latent_delta: expected a finite number"),
        ({"sample": {"decoder": {"gsd_prob_gap": "x"}}}, r"sample.decoder.gsd_prob_gap: expected a number, got 'x'"),
        ({"sample": {"decoder": {"decoder": 1}}}, r"sample.decoder.decoder: expected a string, got 1"),
        ({"sample": {"decoder": {"compile": "yes"}}}, r"sample.decoder.compile: expected true/false"),
    ],
)
def test_config_values_are_refused_as_the_cli_refuses_them(tmp_path, data, match):
    with pytest.raises(CodepriorError, match=r"cfg.yaml: " + match) as e:
        load_config(_cfg(tmp_path, data))
    assert "\n" not in str(e.value)


def _nested(key: str, value: object) -> dict:
    """``train.variants[].lam`` / ``stage_threads.*`` / ``a.b`` as the config dict setting that key to ``value``."""
    parts = key.split(".")
    out: dict = {}
    cur = out
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "*":
            part = "data"
        if part.endswith("[]"):
            item: dict = {"name": "t"}
            cur[part[:-2]] = [item]
            cur = item
            continue
        if last:
            cur[part] = value
        else:
            cur = cur.setdefault(part, {})
    return out


@pytest.mark.parametrize("key", sorted(value_bounds()))
def test_every_bounded_key_refuses_what_its_cli_type_refuses(tmp_path, key):
    """A walk over every numeric key: a word, infinity, and -1 where the CLI type refuses -1 all stop at loading."""
    argtype = value_bounds()[key]
    assert argtype in argtypes.NUMERIC_TYPES  # the bounds come from one place: codeprior.utils.argtypes
    bad: list[object] = ["abc", math.inf]
    try:
        argtype("-1")
    except Exception:
        bad.append(-1)
    for v in bad:
        with pytest.raises(CodepriorError, match=r"cfg.yaml: ") as e:
            load_config(_cfg(tmp_path, _nested(key, v)))
        assert f": {key.replace('[]', '[0]').replace('*', 'data')}: " in str(e.value) and "\n" not in str(e.value)


def test_unknown_model_is_refused_by_dry_run_before_any_work(tmp_path, capsys):
    data = yaml.safe_load(yaml.safe_dump(demo_config().model_dump()))
    data["refine"]["model"] = "Refine-typo"
    data["priors"]["compression_rate"] = None
    p = _cfg(tmp_path, data)
    for extra in (["--dry-run"], []):
        assert _cli(p, "--out", tmp_path / "run", *extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "refine.model: unknown model 'Refine-typo'" in err
    assert not (tmp_path / "run").exists()


def test_cli_overrides_are_checked_with_the_same_bounds(tmp_path):
    from codeprior.pipeline import run_pipeline

    cfg = demo_config()
    cfg.jobs = 0  # what a caller of the Python API could set after loading
    with pytest.raises(CodepriorError, match=r"<config>: jobs: expected an integer in 1\.\.1024"):
        run_pipeline(cfg, tmp_path / "run", dry_run=True, log=quiet)
