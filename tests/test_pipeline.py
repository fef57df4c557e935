"""The stage pipeline: skip / resume / force mechanics with light fake stages, config validation, CLI errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from codeprior.errors import CodepriorError
from codeprior.pipeline import (
    Stage,
    config_from_dict,
    demo_config,
    demo_config_text,
    load_config,
    plan_stages,
    read_stage_manifest,
    run_stages,
)

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------- fake stages
class Counter:
    """Counts executions per stage in a file outside the run folder (so clearing a stage dir cannot reset it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def bump(self, name: str) -> None:
        c = self.get()
        c[name] = c.get(name, 0) + 1
        self.path.write_text(json.dumps(c))

    def get(self) -> dict[str, int]:
        return json.loads(self.path.read_text()) if self.path.exists() else {}


def make_stages(
    tmp_path: Path, cfg: dict | None = None, fail: set[str] | None = None, external: Path | None = None
) -> tuple[list[Stage], Counter, list]:
    """a -> b -> c, plus d depending on a only. Each stage writes out.txt = its upstream's text + its name."""
    cfg = cfg or {}
    counter = Counter(tmp_path / "counter.json")
    resumes: list[tuple[str, bool]] = []

    def body(name: str):
        def run(ctx):
            counter.bump(name)
            resumes.append((name, ctx.resume))
            text = "".join((ctx.stage_dir(d) / "out.txt").read_text() for d in sorted(ctx.upstream)) + name
            partial = ctx.dir / "partial.txt"
            if ctx.resume:
                assert partial.exists(), "a resumed stage must find its partial outputs"
            partial.write_text("half")
            if fail and name in fail:
                fail.discard(name)
                raise RuntimeError(f"{name} crashed")
            (ctx.dir / "out.txt").write_text(text)
            return {"len": len(text)}

        return run

    inputs = (lambda: {"ext": external.read_text()}) if external is not None else None
    stages = [
        Stage("a", body("a"), (), cfg.get("a", {"x": 1}), inputs=inputs),
        Stage("b", body("b"), ("a",), cfg.get("b", {"y": 1})),
        Stage("c", body("c"), ("b",), cfg.get("c", {})),
        Stage("d", body("d"), ("a",), cfg.get("d", {})),
    ]
    return stages, counter, resumes


def quiet(msg: str) -> None:
    pass


def test_first_run_then_all_skipped(tmp_path):
    stages, counter, _ = make_stages(tmp_path)
    res = run_stages(stages, tmp_path / "run", log=quiet)
    assert [r.action for r in res] == ["ran"] * 4
    assert (tmp_path / "run" / "c" / "out.txt").read_text() == "abc"
    m = read_stage_manifest(tmp_path / "run" / "b")
    assert m["status"] == "done" and m["metrics"] == {"len": 2} and m["config"] == {"y": 1}
    assert m["upstream"] == {"a": read_stage_manifest(tmp_path / "run" / "a")["run_id"]}
    assert m["codeprior_version"] and m["seconds"] >= 0
    res = run_stages(stages, tmp_path / "run", log=quiet)
    assert [r.action for r in res] == ["skipped"] * 4
    assert counter.get() == {"a": 1, "b": 1, "c": 1, "d": 1}
    assert all(a == "skip" for _, a in plan_stages(stages, tmp_path / "run"))


def test_config_change_reruns_stage_and_downstream_only(tmp_path):
    stages, counter, _ = make_stages(tmp_path)
    run_stages(stages, tmp_path / "run", log=quiet)
    stages2, _, _ = make_stages(tmp_path, cfg={"b": {"y": 2}})
    assert dict(plan_stages(stages2, tmp_path / "run")) == {"a": "skip", "b": "redo", "c": "redo", "d": "skip"}
    res = run_stages(stages2, tmp_path / "run", log=quiet)
    assert {r.name: r.action for r in res} == {"a": "skipped", "b": "ran", "c": "ran", "d": "skipped"}
    assert counter.get() == {"a": 1, "b": 2, "c": 2, "d": 1}
    assert read_stage_manifest(tmp_path / "run" / "b")["config"] == {"y": 2}


def test_external_input_change_reruns(tmp_path):
    ext = tmp_path / "ext.txt"
    ext.write_text("v1")
    stages, counter, _ = make_stages(tmp_path, external=ext)
    run_stages(stages, tmp_path / "run", log=quiet)
    run_stages(stages, tmp_path / "run", log=quiet)
    assert counter.get()["a"] == 1
    ext.write_text("v2")
    run_stages(stages, tmp_path / "run", log=quiet)
    assert counter.get() == {"a": 2, "b": 2, "c": 2, "d": 2}
    assert read_stage_manifest(tmp_path / "run" / "a")["inputs"] == {"ext": "v2"}


def test_skip_and_resume_are_decided_once(tmp_path):
    """The plan decides each stage's fate (engine.decide) and the run follows it: a skipped stage's external inputs
    are hashed once per run (by the plan), not again when the run reaches the stage."""
    ext = tmp_path / "ext.txt"
    ext.write_text("v1")
    stages, counter, _ = make_stages(tmp_path, external=ext)
    hashed: list[str] = []
    given = stages[0].inputs
    assert given is not None

    def inputs() -> dict[str, str]:
        hashed.append("a")
        return given()

    stages[0].inputs = inputs
    run_stages(stages, tmp_path / "run", log=quiet)
    assert hashed == ["a"]  # no record yet: the plan says run without hashing; the manifest records the hash
    hashed.clear()
    res = run_stages(stages, tmp_path / "run", log=quiet)
    assert [r.action for r in res] == ["skipped"] * 4 and hashed == ["a"]
    ext.write_text("v2")
    hashed.clear()
    res = run_stages(stages, tmp_path / "run", log=quiet)
    assert [r.action for r in res] == ["ran"] * 4 and hashed == ["a", "a"]  # the plan's, then the new manifest's
    assert counter.get() == {"a": 2, "b": 2, "c": 2, "d": 2}


def test_force_redoes_stage_and_downstream(tmp_path):
    stages, counter, _ = make_stages(tmp_path)
    run_stages(stages, tmp_path / "run", log=quiet)
    old_c = read_stage_manifest(tmp_path / "run" / "c")["run_id"]
    res = run_stages(stages, tmp_path / "run", force=["b"], log=quiet)
    assert {r.name: r.action for r in res} == {"a": "skipped", "b": "ran", "c": "ran", "d": "skipped"}
    assert read_stage_manifest(tmp_path / "run" / "c")["run_id"] != old_c
    run_stages(stages, tmp_path / "run", force=["a"], log=quiet)
    assert counter.get() == {"a": 2, "b": 3, "c": 3, "d": 2}
    with pytest.raises(CodepriorError, match="--force nope: no such stage"):
        run_stages(stages, tmp_path / "run", force=["nope"], log=quiet)


def test_failed_stage_resumes_with_its_partial_outputs(tmp_path):
    stages, counter, resumes = make_stages(tmp_path, fail={"b"})
    with pytest.raises(RuntimeError, match="b crashed"):
        run_stages(stages, tmp_path / "run", log=quiet)
    m = read_stage_manifest(tmp_path / "run" / "b")
    assert m["status"] == "failed" and "b crashed" in m["error"]
    assert not (tmp_path / "run" / "c").exists()
    assert dict(plan_stages(stages, tmp_path / "run"))["b"] == "resume"
    res = run_stages(stages, tmp_path / "run", log=quiet)
    assert {r.name: r.action for r in res} == {"a": "skipped", "b": "resumed", "c": "ran", "d": "ran"}
    assert ("b", True) in resumes
    m = read_stage_manifest(tmp_path / "run" / "b")
    assert m["status"] == "done" and m["attempts"] == 2
    assert counter.get() == {"a": 1, "b": 2, "c": 1, "d": 1}


def test_killed_stage_resumes(tmp_path):
    """A process killed mid-stage leaves status 'running': the next run resumes it (not redo)."""
    stages, counter, resumes = make_stages(tmp_path)
    run_stages(stages, tmp_path / "run", log=quiet)
    m = read_stage_manifest(tmp_path / "run" / "c")
    m["status"] = "running"
    (tmp_path / "run" / "c" / "manifest.json").write_text(json.dumps(m))
    res = run_stages(stages, tmp_path / "run", log=quiet)
    assert {r.name: r.action for r in res}["c"] == "resumed"
    assert resumes[-1] == ("c", True)


def test_failed_stage_with_changed_config_is_redone_from_scratch(tmp_path):
    stages, _, _ = make_stages(tmp_path, fail={"b"})
    with pytest.raises(RuntimeError):
        run_stages(stages, tmp_path / "run", log=quiet)
    assert read_stage_manifest(tmp_path / "run" / "b")["files"] == ["partial.txt"]  # the failed attempt's own file
    (tmp_path / "run" / "b" / "stale.txt").write_text("not codeprior's")
    stages2, _, resumes = make_stages(tmp_path, cfg={"b": {"y": 5}})
    with pytest.raises(CodepriorError, match=r"run/b/stale.txt: not written by stage b"):
        run_stages(stages2, tmp_path / "run", log=quiet)
    assert (tmp_path / "run" / "b" / "stale.txt").read_text() == "not codeprior's"
    (tmp_path / "run" / "b" / "stale.txt").unlink()
    run_stages(stages2, tmp_path / "run", log=quiet)
    assert ("b", False) in resumes  # redone from scratch: its own partial output was removed first


def test_until_stops_after_stage(tmp_path):
    stages, counter, _ = make_stages(tmp_path)
    res = run_stages(stages, tmp_path / "run", until="b", log=quiet)
    assert [r.name for r in res] == ["a", "b"]
    assert counter.get() == {"a": 1, "b": 1}


def test_until_runs_only_the_stage_and_what_it_needs(tmp_path):
    """A stage listed before the target but not needed by it (d needs only a) is not run."""
    stages, counter, _ = make_stages(tmp_path)
    a, b, c, d = stages
    res = run_stages([a, d, b, c], tmp_path / "run", until="b", log=quiet)
    assert [r.name for r in res] == ["a", "b"]
    assert counter.get() == {"a": 1, "b": 1} and not (tmp_path / "run" / "d").exists()
    res = run_stages([a, d, b, c], tmp_path / "run", until="c", log=quiet)
    assert [(r.name, r.action) for r in res] == [("a", "skipped"), ("b", "skipped"), ("c", "ran")]


def test_undeclared_dependency_cannot_be_read(tmp_path):
    def sneaky(ctx):
        ctx.stage_dir("a")

    with pytest.raises(KeyError, match="did not declare"):
        run_stages([Stage("a", lambda ctx: {}), Stage("b", sneaky)], tmp_path / "run", log=quiet)


def test_stage_order_is_checked(tmp_path):
    with pytest.raises(ValueError, match="does not come before"):
        run_stages([Stage("b", lambda ctx: {}, ("a",)), Stage("a", lambda ctx: {})], tmp_path, log=quiet)


# --------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("preset, fname", [("quick", "demo.yaml"), ("full", "demo-full.yaml")])
def test_demo_config_files_match_packaged_copies(preset, fname):
    assert (ROOT / "configs" / fname).read_text() == demo_config_text(preset)
    assert load_config(ROOT / "configs" / fname) == demo_config(preset)


def test_longer_grid_config_is_the_quick_demo_on_a_14x14_tokenizer():
    """benchmarks/speculative_grid14.yaml validates, its tokenizer gives 14x14 codes, and its training recipe is the
    quick demo's (the speculative benchmark compares decoders on the same recipe at two sequence lengths)."""
    from codeprior.models.vq import VQModel, get_vq_config

    cfg, quick = load_config(ROOT / "benchmarks" / "speculative_grid14.yaml"), demo_config("quick")
    vq = VQModel(get_vq_config(cfg.tokenizer.model)).eval()
    with torch.no_grad():
        assert vq.encode(torch.zeros(1, 1, 28, 28))[2].shape == (1, 14, 14)
    assert [(v.objective, v.prior) for v in cfg.train.variants] == [("token", None)]
    assert cfg.priors.methods == quick.priors.methods and cfg.sample.cfg_scale == quick.sample.cfg_scale
    same = ("model", "steps", "batch_size", "lr", "warmup_steps", "dropout")
    assert {k: getattr(cfg.train, k) for k in same} == {k: getattr(quick.train, k) for k in same}


def test_demo_presets_compare_priors_at_equal_settings():
    quick, full = demo_config("quick"), demo_config("full")
    assert [(v.objective, v.prior) for v in quick.train.variants] == [
        ("token", None),
        ("coarse", "kmeans"),
        ("coarse", "dcpe"),
    ]
    assert quick.priors.methods == ["kmeans", "dcpe"] and quick.threads == 1 and quick.jobs == 2
    assert {(v.objective, v.prior) for v in full.train.variants} >= {
        (o, p) for o in ("cluster-ce", "coarse") for p in ("kmeans", "dcpe")
    }
    assert full.train.seeds >= 3 and full.train.steps > quick.train.steps
    # the full preset shares every stage before training with the quick one (same config slices)
    from codeprior.pipeline import build_stages

    q = {s.name: s.config for s in build_stages(quick, "cpu")}
    f = {s.name: s.config for s in build_stages(full, "cpu")}
    for name in ("data", "tokenizer", "tokenize", "classifier", "priors", "tokenizer-eval", "substitution"):
        assert q[name] == f[name], name
    with pytest.raises(CodepriorError, match="unknown --preset"):
        demo_config_text("huge")


def _write(tmp_path: Path, data: dict | str) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


@pytest.mark.parametrize(
    "data, match",
    [
        ({"train": {"stepz": 3}}, r"cfg.yaml: train.stepz: unknown key"),
        ({"bogus": 1}, r"cfg.yaml: bogus: unknown key"),
        ({"train": {"steps": "ten"}}, r"cfg.yaml: train.steps: expected an integer, got 'ten'"),
        ({"train": {"steps": True}}, r"train.steps: expected an integer"),
        ({"train": {"lr": "fast"}}, r"train.lr: expected a number"),
        ({"train": {"compile": "yes"}}, r"train.compile: expected true/false"),
        ({"train": {"steps": 0}}, r"train.steps: expected an integer > 0, got '0'"),
        ({"train": []}, r"train: expected a mapping"),
        (
            {"tokenizer": {"checkpoint": "missing-vq.pt"}},
            r"cfg.yaml: tokenizer.checkpoint: no such file: missing-vq.pt",
        ),
        ({"data": {"data_dir": "nowhere"}}, r"data.data_dir: no such directory"),
        ({"data": {"dataset": "cifar"}}, r"data.dataset: expected fashion-mnist or mnist or an image folder"),
        ({"priors": {"methods": ["dcpe", "spectral"]}}, r"priors.methods\[1\]: unknown method 'spectral'"),
        ({"priors": {"k": 64, "compression_rate": 2}}, r"priors: give one of k and compression_rate, not both"),
        ({"train": {"lr": float("nan")}}, r"train.lr: expected a finite number"),
        ({"priors": {"compression_rate": float("inf")}}, r"priors.compression_rate: expected a finite number"),
        ({"train": {"keep_ckpts": -1}}, r"train.keep_ckpts: expected an integer >= 0, got '-1'"),
        ("", r"cfg.yaml: empty config file"),
        ("# only a comment\n", r"cfg.yaml: empty config file"),
        (
            {"train": {"variants": [{"name": "x", "objective": "coarse", "prior": "balanced-kmeans"}]}},
            r"train.variants\[0\].prior: 'balanced-kmeans' is not extracted",
        ),
        (
            {"train": {"variants": [{"name": "x", "objective": "ctf"}]}},
            r"train.variants\[0\].objective: must be one of 'token' \| 'cluster-ce' \| 'coarse'",
        ),
        ({"train": {"variants": [{"objective": "token"}]}}, r"train.variants\[0\].name: required key missing"),
        ({"train": {"variants": [{"name": "a b", "objective": "token"}]}}, r"variants\[0\].name: use letters"),
        (
            {"train": {"variants": [{"name": "t", "objective": "token"}, {"name": "t", "objective": "token"}]}},
            r"variants\[1\].name: duplicate",
        ),
        ({"train": {"torchrun": {"nproc_per_node": 2, "nnodes": 1, "node_rank": 1}}}, r"train.torchrun.node_rank"),
        ({"sample": {"refine_mode": "greedy"}}, r"sample.refine_mode: must be one of"),
        (
            {"sample": {"decoder": {"decoder": "sjd", "window": 0}}},
            r"cfg.yaml: sample.decoder.window: expected an integer > 0, got '0'",
        ),
        # sample.decoder is a typed section (the DecoderSettings record): unknown keys read as in every section
        ({"sample": {"decoder": {"windo": 3}}}, r"sample.decoder.windo: unknown key \(allowed: decoder, accept"),
        (
            {"sample": {"decoder": {"decoder": "sjd", "accept": "prior", "prior": "balanced-kmeans"}}},
            r"sample.decoder.prior: must be one of priors.methods \(kmeans, dcpe\), got 'balanced-kmeans'",
        ),
        (
            {"sample": {"decoder": {"decoder": "sjd", "accept": "latent"}}},
            r"sample.decoder.accept: latent applies to models over codes, but coarse-dcpe sample cluster ids",
        ),
        ({"evaluate": {"reference": "ref.npz"}}, r"evaluate.reference: no such file: ref.npz"),
        ("train: [unclosed", r"cfg.yaml: not valid YAML \(line 1\)"),
        ("- just\n- a list\n", r"cfg.yaml: top level: expected a mapping"),
    ],
)
def test_config_errors_are_one_line_naming_file_and_key(tmp_path, data, match):
    p = _write(tmp_path, data)
    with pytest.raises(CodepriorError, match=match) as e:
        load_config(p)
    assert "\n" not in str(e.value)


def test_priors_k_alone_and_retention_default(tmp_path):
    cfg = load_config(_write(tmp_path, {"priors": {"k": 16}}))
    assert cfg.priors.k == 16 and cfg.priors.compression_rate is None
    cfg = load_config(_write(tmp_path, {"name": "x"}))
    assert cfg.priors.k is None and cfg.priors.compression_rate == 2.0
    assert cfg.train.keep_ckpts == 2


def test_given_codeprior_tokenizer_loads_with_its_stored_config(tmp_path):
    from codeprior.models import save_vq
    from codeprior.models.vq import VQModel, get_vq_config
    from codeprior.pipeline.stages.common import load_vq as _load_vq

    vq = VQModel(
        get_vq_config(
            "VQ-fmnist", codebook_size=16, ch=16, z_channels=16, norm_groups=4, ch_mult=[1, 2, 2], image_size=12
        )
    )
    save_vq(vq, tmp_path / "vq.pt")
    cfg = load_config(_write(tmp_path, {"tokenizer": {"checkpoint": "vq.pt"}}))  # tokenizer.model: the default
    assert _load_vq(cfg, cfg.tokenizer.checkpoint, "cpu").config.codebook_size == 16


def test_config_paths_resolve_against_config_folder(tmp_path):
    (tmp_path / "vq.pt").write_bytes(b"x")
    cfg = load_config(_write(tmp_path, {"tokenizer": {"checkpoint": "vq.pt"}}))
    assert cfg.tokenizer.checkpoint == str((tmp_path / "vq.pt").resolve())
    assert cfg.train.torchrun is None


def test_example_real_run_config(tmp_path):
    """configs/imagenet-llamagen-b.yaml parses; with its paths pointing at real files it validates."""
    text = (ROOT / "configs" / "imagenet-llamagen-b.yaml").read_text()
    data = yaml.safe_load(text)
    with pytest.raises(CodepriorError, match="imagenet-llamagen-b.yaml: "):
        load_config(ROOT / "configs" / "imagenet-llamagen-b.yaml")
    for sub in ("train", "val"):
        (tmp_path / sub / "n01440764").mkdir(parents=True)
    (tmp_path / "vq_ds16_c2i.pt").write_bytes(b"x")
    data["data"]["dataset"] = str(tmp_path)
    data["tokenizer"]["checkpoint"] = str(tmp_path / "vq_ds16_c2i.pt")
    for name in ("inception.pth", "ref.npz"):
        (tmp_path / name).write_bytes(b"x")
    data["classifier"]["inception_weights"] = str(tmp_path / "inception.pth")
    data["evaluate"]["reference"] = str(tmp_path / "ref.npz")
    (tmp_path / "val").rename(tmp_path / "elsewhere")
    with pytest.raises(CodepriorError, match="x.yaml: data.dataset: image folder .* needs train/ and val/"):
        config_from_dict(data, "x.yaml")
    (tmp_path / "elsewhere").rename(tmp_path / "val")
    cfg = config_from_dict(data, "x.yaml")
    assert cfg.train.model == "GPT-B" and cfg.tokenizer.model == "VQ-16"
    assert cfg.train.torchrun is not None and cfg.train.torchrun.nproc_per_node >= 1
    data["evaluate"]["reference"] = "test-split"
    with pytest.raises(CodepriorError, match="x.yaml: evaluate.reference: give an .npz"):
        config_from_dict(data, "x.yaml")


def test_cli_reports_bad_config_in_one_line(tmp_path, capsys):
    from codeprior.cli import main

    p = _write(tmp_path, {"train": {"stepz": 3}})
    assert main(["pipeline", str(p), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"codeprior: error: {p}: train.stepz: unknown key (allowed: model, variants, max_steps, ")
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------------------- stages
def test_demo_stages_order_and_dependencies():
    from codeprior.pipeline import build_stages, downstream_closure

    stages = build_stages(demo_config(), "cpu")
    names = [s.name for s in stages]
    assert names == [
        "data",
        "tokenizer",
        "priors",
        "tokenize",
        "train-token",
        "train-coarse-kmeans",
        "train-coarse-dcpe",
        "classifier",
        "train-refine-kmeans",
        "train-refine-dcpe",
        "tokenizer-eval",
        "substitution",
        "sample-token",
        "sample-coarse-kmeans",
        "sample-coarse-dcpe",
        "evaluate",
        "report",
    ]
    deps = {s.name: set(s.deps) for s in stages}
    # training needs only the codes and the prior: it starts while the classifier and refine models train
    assert deps["train-coarse-dcpe"] == deps["train-token"] == {"data", "tokenizer", "tokenize", "priors"}
    assert {"train-refine-dcpe", "classifier", "train-coarse-dcpe"} <= deps["sample-coarse-dcpe"]
    assert "train-refine-kmeans" in deps["sample-coarse-kmeans"] and "train-refine-dcpe" not in deps["sample-token"]
    assert deps["report"] == set(names[:-1])
    # a new prior invalidates everything that uses it, but not the tokenizer or the classifier
    redo = downstream_closure(stages, ["priors"])
    assert {"tokenizer", "tokenize", "classifier", "tokenizer-eval"}.isdisjoint(redo)
    assert {"train-token", "train-refine-dcpe", "evaluate", "report"} <= redo  # token logs cluster accuracy
    # a new classifier re-measures the samples, it does not retrain anything
    redo = downstream_closure(stages, ["classifier"])
    assert not any(n.startswith("train-") for n in redo) and "sample-token" in redo


def test_seeds_make_one_run_per_variant_and_seed():
    from codeprior.pipeline import build_stages

    cfg = demo_config()
    cfg.train.seeds = 2
    stages = {s.name: s for s in build_stages(cfg, "cpu")}
    assert {"train-token", "train-token-seed1", "sample-coarse-dcpe-seed1"} <= set(stages)
    assert stages["train-token"].config["seed"] == 0 and stages["train-token-seed1"].config["seed"] == 1
    assert "train-token-seed1" in stages["sample-token-seed1"].deps
    assert "sample-coarse-kmeans-seed1" in stages["evaluate"].deps
    # seeds: 1 keeps the stage configs (and so the fingerprints) of runs made before the key existed
    one = {s.name: s.config for s in build_stages(demo_config(), "cpu")}
    assert one["train-token"]["seed"] == 0


def test_stage_config_slices_isolate_changes():
    """Changing sampling settings must not retrain the tokenizer or the priors (their fingerprints ignore it)."""
    from codeprior.pipeline import build_stages

    a = {s.name: s.config for s in build_stages(demo_config(), "cpu")}
    cfg = demo_config()
    cfg.sample.num_samples = 7
    b = {s.name: s.config for s in build_stages(cfg, "cpu")}
    changed = {n for n in a if a[n] != b[n]}
    assert "sample-token" in changed and "tokenizer" not in changed and "priors" not in changed
    assert "train-refine-dcpe" not in changed and "train-token" not in changed  # sampling does not retrain


def test_decoder_settings_reach_the_sample_stages_only():
    """AR (the default, however spelled) keeps the sample stages' fingerprints; SJD changes only theirs, and a
    prior acceptance rule makes them read the priors stage."""
    from codeprior.pipeline import build_stages

    base = {s.name: (s.config, s.deps) for s in build_stages(demo_config(), "cpu")}
    cfg = demo_config()
    cfg.sample.decoder = {"decoder": "ar", "window": 4}
    assert {s.name: (s.config, s.deps) for s in build_stages(cfg, "cpu")} == base
    cfg.train.variants = [v for v in cfg.train.variants if v.objective != "coarse"]
    cfg.sample.decoder = {"decoder": "sjd", "accept": "prior", "prior": "dcpe"}
    new = {s.name: (s.config, s.deps) for s in build_stages(cfg, "cpu")}
    changed = {n for n in new if n in base and new[n] != base[n]}
    assert "sample-token" in changed and all(n.startswith("sample-") or n in ("evaluate", "report") for n in changed)
    assert new["sample-token"][0]["decoder"] == {"decoder": "sjd", "accept": "prior", "prior": "dcpe"}
    assert "priors" in new["sample-token"][1] and "priors" not in base["sample-token"][1]


def test_torchrun_command():
    from codeprior.pipeline import TorchrunConfig, torchrun_command

    cmd = torchrun_command(TorchrunConfig(nproc_per_node=8), "spec.json")
    assert cmd[1:] == [
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=8",
        "--nnodes=1",
        "--standalone",
        "-m",
        "codeprior.pipeline",
        "train-worker",
        "spec.json",
    ]
    cmd = torchrun_command(TorchrunConfig(nproc_per_node=4, nnodes=2, node_rank=1, master_addr="10.0.0.1"), "s.json")
    assert "--node_rank=1" in cmd and "--master_addr=10.0.0.1" in cmd and "--standalone" not in cmd


def test_dry_run_lists_plan(tmp_path, capsys):
    from codeprior.cli import main

    assert main(["demo", "--out", str(tmp_path / "run"), "--dry-run", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.split("\n")
    assert lines[0].split() == ["run", "data"] and any(line.split() == ["run", "report"] for line in lines)
    assert not (tmp_path / "run").exists()
    assert main(["demo", "--out", str(tmp_path / "run"), "--dry-run", "--device", "cpu", "--until", "classifier"]) == 0
    assert [line.split() for line in capsys.readouterr().out.strip().split("\n")] == [
        ["run", "data"],
        ["run", "classifier"],
    ]
    assert main(["demo", "--print-config"]) == 0
    assert capsys.readouterr().out == demo_config_text("quick")
    assert main(["demo", "--preset", "full", "--print-config"]) == 0
    assert capsys.readouterr().out == demo_config_text("full")


# --------------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_tiny_pipeline_end_to_end(tmp_path, fmnist_idx, tiny_pipeline):
    """Every real stage on 300 Fashion-MNIST images with tiny sizes; then a re-run skips all; --force redoes."""
    import numpy as np

    from codeprior.curves import snapshots
    from codeprior.pipeline import build_stages, run_pipeline
    from codeprior.pipeline.run_folder import owns

    fmnist_idx(tmp_path / "data")
    cfg = config_from_dict(
        {
            **tiny_pipeline(tmp_path / "data"),
            "priors": {"compression_rate": 64},
            "substitution": {"num_images": 40, "draws": 2},
            "train": {"steps": 4, "batch_size": 8, "ckpt_every": 2, "eval_every": 2, "eval_samples": 20},
            "refine": {"steps": 3, "batch_size": 8},
            "sample": {"num_samples": 20, "grid_per_class": 2, "batch_size": 10},
        },
        "tiny.yaml",
    )
    run = tmp_path / "run"
    logs: list[str] = []
    res = run_pipeline(cfg, run, log=logs.append)
    assert [r.action for r in res] == ["ran"] * 16
    stages = {s.name: s for s in build_stages(cfg, "cpu")}
    for r in res:
        m = read_stage_manifest(run / r.name)
        assert m["status"] == "done"
        # every entry a stage wrote is one it declares, so a killed attempt's files are still known as its own
        assert all(owns(stages[r.name], {}, e) for e in os.listdir(run / r.name)), r.name
    with np.load(run / "sample-coarse-dcpe" / "samples.npz") as z:
        assert z["arr_0"].shape == (20, 28, 28, 1) and z["arr_0"].dtype == np.uint8
        assert np.bincount(z["labels"], minlength=10).tolist() == [2] * 10
    metrics = json.loads((run / "evaluate" / "metrics.json").read_text())
    assert [r["variant"] for r in metrics["rows"]] == ["token", "cluster-ce-dcpe", "coarse-dcpe"]
    assert all(np.isfinite(r["fid"]) for r in metrics["rows"])
    assert "in-project classifier" in metrics["feature_extractor"]
    curve = json.loads((run / "sample-coarse-dcpe" / "curve.json").read_text())  # over the training's snapshots
    assert curve["step"] == [2, 4] and len(curve["fid"]) == 2 and all(np.isfinite(curve["fid"]))
    assert [s for s, _ in snapshots(run / "train-coarse-dcpe" / "run")] == [2, 4]
    assert "cluster_acc" in json.loads((run / "train-token" / "curves.json").read_text())["train"]
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 9
    assert any("report.html" in line for line in logs)

    res = run_pipeline(cfg, run, log=logs.append)
    assert [r.action for r in res] == ["skipped"] * 16
    res = run_pipeline(cfg, run, force=["sample-token"], log=logs.append)
    assert {r.name for r in res if r.action == "ran"} == {"sample-token", "evaluate", "report"}

    # jobs: 2 (two stages at a time, forked processes) gives every stage's serial result, bit for bit
    cfg.jobs = 2
    run2 = tmp_path / "run2"
    res = run_pipeline(cfg, run2, log=logs.append)
    assert sorted(r.action for r in res) == ["ran"] * 16
    assert json.loads((run2 / "evaluate" / "metrics.json").read_text())["rows"] == metrics["rows"]
    for f in ("priors/sizes.json", "tokenize/codes/train/codes.npy"):
        assert (run2 / f).read_bytes() == (run / f).read_bytes(), f
    assert (
        json.loads((run2 / "substitution" / "substitution.json").read_text())["rows"]
        == json.loads((run / "substitution" / "substitution.json").read_text())["rows"]
    )
    for v in ("token", "cluster-ce-dcpe", "coarse-dcpe"):
        with np.load(run / f"sample-{v}" / "samples.npz") as a, np.load(run2 / f"sample-{v}" / "samples.npz") as b:
            assert np.array_equal(a["arr_0"], b["arr_0"]), v
        assert json.loads((run2 / f"sample-{v}" / "curve.json").read_text()) == json.loads(
            (run / f"sample-{v}" / "curve.json").read_text()
        )

    # speculative Jacobi decoding from the config: samples.json and the report record it; fewer passes than AR
    cfg.sample.decoder = {"decoder": "sjd", "accept": "exact", "window": 4}
    res = run_pipeline(cfg, run, log=logs.append)
    assert {r.name for r in res if r.action == "ran"} >= {"sample-token", "sample-coarse-dcpe", "evaluate", "report"}
    meta = json.loads((run / "sample-token" / "samples.json").read_text())
    assert meta["decoder"]["decoder"] == "sjd" and meta["decoder"]["window"] == 4
    assert meta["accepted_per_pass"] >= 1 and meta["forward_passes"] <= 20 * 49
    assert "tokens per forward pass" in (run / "report.md").read_text()


def test_training_stage_passes_resume_and_reads_curves(tmp_path):
    from codeprior.pipeline import StageContext
    from codeprior.pipeline.stages.train import read_curves as _curves
    from codeprior.pipeline.stages.train import train_config_dict as _train_config_dict

    cfg = demo_config()
    up = {"tokenize": {"metrics": {"codes": "/codes"}}}
    for resume, want in ((True, "auto"), (False, None)):
        ctx = StageContext("train-token", tmp_path, tmp_path, resume, up)
        tc = _train_config_dict(
            cfg, ctx, "cpu", objective="token", model="GPT-tiny", prior_file=None, lam=1.0, steps=400, batch=32, lr=1e-3
        )
        assert tc["resume"] == want and tc["out"] == str(tmp_path / "run") and tc["max_steps"] == 400
        assert tc["eval_every"] == cfg.train.eval_every and tc["codes"] == "/codes"
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("step,loss,token_acc,cluster_acc,val_loss\n10,5.0,0.1,,\n20,4.0,0.2,,3.5\n")
    # a resumed run re-evaluated step 20: the later record wins
    (run / "eval.jsonl").write_text('{"step": 10, "fid": 9.0}\n{"step": 20, "fid": 8.0}\n{"step": 20, "fid": 7.5}\n')
    c = _curves(run)
    assert c["train"]["step"] == [10.0, 20.0] and c["train"]["loss"] == [5.0, 4.0]
    assert c["train"]["val_loss"] == [None, 3.5] and "cluster_acc" not in c["train"]
    assert c["eval"] == {"fid": [9.0, 7.5], "step": [10, 20]}


def test_outputs_records_round_trip_through_the_manifest(tmp_path):
    """A stage's record is its manifest's metrics (plain JSON) and re-loads from it: what a skipped stage feeds on."""
    from codeprior.pipeline import PriorsOutputs, TokenizeOutputs, TokenizerOutputs
    from codeprior.pipeline.stages.tokenize import FILES

    rec = TokenizeOutputs(
        codes=tmp_path / FILES.codes,
        grid=(7, 7),
        seq_len=49,
        codebook_size=4096,
        n_aug=2,
        dtype="uint16",
        splits={"train": 10, "val": 5},
        images_per_s=1.5,
    )

    def stage(ctx):
        return rec

    run_stages([Stage("tokenize", stage)], tmp_path / "run", log=quiet)
    m = read_stage_manifest(tmp_path / "run" / "tokenize")
    assert m["metrics"] == {
        "codes": str(tmp_path / "codes"),
        "grid": [7, 7],
        "seq_len": 49,
        "codebook_size": 4096,
        "n_aug": 2,
        "dtype": "uint16",
        "splits": {"train": 10, "val": 5},
        "images_per_s": 1.5,
    }
    back = TokenizeOutputs.from_manifest(m)
    assert back == rec and isinstance(back.codes, Path) and back.grid == (7, 7) and back.val_split == "val"
    partial = TokenizeOutputs.from_metrics({"codes": "/codes"})  # a hand-made or older manifest
    assert partial.codes == Path("/codes") and partial.grid is None and partial.val_split == "test"
    pr = PriorsOutputs(k=8, num_codes=64, files={"dcpe": tmp_path / "dcpe.safetensors"}, summary={})
    assert PriorsOutputs.from_metrics(json.loads(json.dumps(pr.to_metrics()))) == pr
    given = TokenizerOutputs(
        source="given checkpoint",
        steps=None,
        train_seconds=None,
        checkpoint=tmp_path / "vq.pt",
        checkpoint_sha256="ab",
        model="VQ-16",
        codebook_size=16384,
        codebook_dim=8,
        grid=(16, 16),
    )
    assert "steps" not in given.to_metrics() and TokenizerOutputs.from_metrics(given.to_metrics()) == given
