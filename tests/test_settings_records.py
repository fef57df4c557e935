"""Settings records (codeprior.utils.settings): one name and one default per setting across the CLI, the pipeline's
config and the records, and old spellings that keep working for one release with one deprecation line.

Each record generates its command's flags and its pipeline section: the defaults and help read there are the
record's. An old flag or YAML key parses to the same settings as the new one and prints one line on stderr; a
config in the old spelling hashes to the same stage fingerprints, so finished runs stay finished.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import asdict

import pytest

from codeprior.classifier_settings import ClassifierConfig
from codeprior.cli import build_parser
from codeprior.decoding.settings import DecoderSettings, SampleSettings
from codeprior.errors import CodepriorError
from codeprior.evaluate_settings import EvaluateSettings
from codeprior.tokenize_settings import TokenizeSettings
from codeprior.train.config import TrainConfig
from codeprior.utils.settings import default_of, flag_of, record_fields

DEPRECATION = "is deprecated, use"


def _subparser(words: list[str]) -> argparse.ArgumentParser:
    p = build_parser()
    for w in words:
        sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        p = sub.choices[w]
    return p


def _parse(words: list[str], argv: list[str], capsys) -> tuple[argparse.Namespace, str]:
    capsys.readouterr()
    ns = _subparser(words).parse_args(argv)
    return ns, capsys.readouterr().err


SAMPLE = ["--ckpt", "g.pt", "--tokenizer", "v.pt", "--out", "o"]


@pytest.mark.parametrize(
    "words,base,old,new,dest",
    [
        (["sample"], SAMPLE, ["--num", "7"], ["--num-samples", "7"], "num_samples"),
        (["sample"], SAMPLE + ["--num-samples", "1"], ["--gpt-model", "GPT-B"], ["--model", "GPT-B"], "model"),
        (["sample"], SAMPLE + ["--num-samples", "1"], ["--cfg", "3.5"], ["--cfg-scale", "3.5"], "cfg_scale"),
        (["sample"], SAMPLE + ["--num-samples", "1"], ["--compile-decoding"], ["--compile"], "compile"),
        (["evaluate-tokenizer"], ["--tokenizer", "v.pt"], ["--num", "9"], ["--num-images", "9"], "num_images"),
        (["tokenize"], [], ["--splits", "train"], ["--split", "train"], "split"),
        (["tokenize", "check"], ["d", "--tokenizer", "t"], ["--n", "3"], ["--num-images", "3"], "n"),
        (["tokenize", "check"], ["d", "--tokenizer", "t"], ["--num", "3"], ["--num-images", "3"], "n"),
        (["tokenizer", "eval"], ["--tokenizer", "t"], ["--config", "VQ-16"], ["--vq-model", "VQ-16"], "config"),
        (["tokenizer", "eval"], ["--tokenizer", "t"], ["--out", "r.json"], ["--json", "r.json"], "out"),
        (["tokenizer", "train"], ["--out", "o"], ["--config", "VQ-16"], ["--vq-model", "VQ-16"], "config"),
    ],
)
def test_old_flags_parse_as_the_new_ones_with_one_deprecation_line(words, base, old, new, dest, capsys):
    ns_new, err_new = _parse(words, base + new, capsys)
    ns_old, err_old = _parse(words, base + old, capsys)
    assert getattr(ns_old, dest) == getattr(ns_new, dest)
    assert vars(ns_old) == vars(ns_new)
    assert err_new == ""
    lines = err_old.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"codeprior: warning: {old[0]} {DEPRECATION} {new[0]}"), lines


def test_old_flags_are_hidden_from_help():
    """The help names each setting once: the old spellings parse but are not listed."""
    for words, old in (
        (["sample"], ("--gpt-model", "--cfg ", "--num ", "--compile-decoding")),
        (["tokenize"], ("--splits",)),
    ):
        text = _subparser(words).format_help()
        assert not [o for o in old if o in text], words


def test_prior_substitute_num_images(capsys):
    from codeprior.commands.prior import SUB_ACTIONS, _action_parser

    p = _action_parser("codeprior prior", SUB_ACTIONS["substitute"])
    capsys.readouterr()
    a = p.parse_args(["x.safetensors", "--tokenizer", "v.pt", "--num", "12"])
    assert a.num_images == 12 and "--num is deprecated, use --num-images" in capsys.readouterr().err


def test_tokenize_check_json_takes_a_path(capsys):
    ns, err = _parse(["tokenize", "check"], ["d", "--tokenizer", "t", "--json", "r.json"], capsys)
    assert ns.json == "r.json" and err == ""
    ns, err = _parse(["tokenize", "check"], ["d", "--tokenizer", "t", "--json", "-"], capsys)
    assert ns.json == "-" and err == ""
    ns, err = _parse(["tokenize", "check"], ["d", "--tokenizer", "t", "--json"], capsys)  # the old switch
    assert ns.json == "-" and DEPRECATION in err and err.count("\n") == 1


# ------------------------------------------------------------------------------------------------ one default
def _flag_defaults(words: list[str]) -> dict[str, object]:
    p = _subparser(words)
    return {a.dest: a.default for a in p._actions if a.option_strings}


@pytest.mark.parametrize(
    "record,words,skip",
    [
        (SampleSettings, ["sample"], ()),
        (DecoderSettings, ["sample"], ("prior",)),
        (EvaluateSettings, ["evaluate"], ()),
        (TokenizeSettings, ["tokenize"], ()),
        (ClassifierConfig, ["classifier", "train"], ()),
        (TrainConfig, ["train"], ("codes", "out", "eval_every", "model_overrides")),
    ],
)
def test_flags_take_the_records_defaults(record, words, skip):
    flags = _flag_defaults(words)
    for f in record_fields(record):
        if f.name in skip or not f.metadata["cli"]:
            continue
        assert f.name in flags, f"{words}: no flag for {f.name}"
        assert flags[f.name] == default_of(f), f"{words} {flag_of(f)}: {flags[f.name]!r} != {default_of(f)!r}"


def test_pipeline_sections_embed_the_records():
    """sample / sample.decoder / evaluate / tokenize / classifier hold the records' fields: same name, default and help."""
    from codeprior.pipeline.config import CLASSIFIER_FIXED, PipelineConfig

    sections = {
        "sample": (SampleSettings, ("seed", "decoder")),
        "evaluate": (EvaluateSettings, ("seed",)),
        "tokenize": (TokenizeSettings, ()),
        "classifier": (ClassifierConfig, CLASSIFIER_FIXED),
    }
    for name, (record, skip) in sections.items():
        section = PipelineConfig.model_fields[name].annotation
        for f in record_fields(record):
            if f.name in skip:
                continue
            pf = section.model_fields[f.name]
            assert pf.get_default(call_default_factory=True) == default_of(f), f"{name}.{f.name}"
            assert pf.description == f.metadata["help"], f"{name}.{f.name}"
    decoder = PipelineConfig.model_fields["sample"].annotation.model_fields["decoder"].annotation
    assert set(decoder.model_fields) == {f.name for f in record_fields(DecoderSettings)}


def test_pipeline_and_trainer_share_defaults():
    """lr, ckpt_every, keep_ckpts: one default (the trainer's); the pipeline deviates only where it says so."""
    from codeprior.pipeline.config import RefineTrainConfig
    from codeprior.pipeline.config import TrainConfig as Section
    from codeprior.train.config import config_defaults

    d = config_defaults()
    for key in ("lr", "ckpt_every", "keep_ckpts", "weight_decay", "grad_accum", "global_batch"):
        assert Section.model_fields[key].default == d[key], key
    for key in ("lr", "global_batch"):
        assert RefineTrainConfig.model_fields[key].default == d[key], key
    assert d["device"] == "auto"


def test_device_defaults_to_auto_everywhere():
    for words in (["sample"], ["tokenize"], ["tokenize", "check"], ["tokenizer", "train"], ["tokenizer", "eval"]):
        assert _flag_defaults(words)["device"] == "auto", words
    assert _flag_defaults(["train"])["device"] == "auto"


# ------------------------------------------------------------------------------------------------ old YAML keys
OLD_NEW = [
    ({"train": {"steps": 40, "batch_size": 16}}, {"train": {"max_steps": 40, "global_batch": 16}}, 2),
    ({"refine": {"steps": 30, "batch_size": 8}}, {"refine": {"max_steps": 30, "global_batch": 8}}, 2),
    ({"sample": {"tau1": 1.3, "tau2": 0.9}}, {"sample": {"coarse_temperature": 1.3, "refine_temperature": 0.9}}, 2),
    ({"evaluate": {"prdc_k": 3}}, {"evaluate": {"nearest_k": 3}}, 1),
    ({"tokenizer": {"eval_images": 500}}, {"tokenizer": {"num_images": 500}}, 1),
    (
        {
            "train": {"variants": [{"name": "t", "objective": "token"}]},
            "sample": {"decoder": {"decoder": "sjd", "init": "repeat"}},
        },
        {
            "train": {"variants": [{"name": "t", "objective": "token"}]},
            "sample": {"decoder": {"decoder": "sjd", "draft_init": "repeat"}},
        },
        1,
    ),
]


def _stage_hashes(cfg) -> dict[str, str]:
    from codeprior.pipeline.engine import fingerprint
    from codeprior.pipeline.run import build_stages

    return {s.name: fingerprint(s.config, {}, dict.fromkeys(s.deps)) for s in build_stages(cfg, "cpu")}


@pytest.mark.parametrize("old,new,n_lines", OLD_NEW)
def test_old_config_keys_load_and_hash_as_the_new_ones(old, new, n_lines, capsys):
    from codeprior.pipeline.config import config_from_dict, config_to_dict

    capsys.readouterr()
    cfg_new = config_from_dict(new, "new.yaml")
    assert capsys.readouterr().err == ""
    cfg_old = config_from_dict(old, "old.yaml")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == n_lines, lines  # one per old key
    assert all(ln.startswith("codeprior: warning: old.yaml: ") and DEPRECATION in ln for ln in lines), lines
    assert config_to_dict(cfg_old) == config_to_dict(cfg_new)
    assert _stage_hashes(cfg_old) == _stage_hashes(cfg_new)


def test_old_and_new_spelling_together_is_an_error():
    from codeprior.pipeline.config import config_from_dict

    with pytest.raises(
        CodepriorError, match=r"c.yaml: train.steps: give max_steps or its old spelling steps, not both"
    ):
        config_from_dict({"train": {"steps": 4, "max_steps": 5}}, "c.yaml")


def test_errors_name_the_key_as_written(capsys):
    from codeprior.pipeline.config import config_from_dict

    with pytest.raises(CodepriorError, match=r"c.yaml: sample.tau1: expected a finite number >= 0"):
        config_from_dict({"sample": {"tau1": -1.0}}, "c.yaml")
    with pytest.raises(CodepriorError, match=r"c.yaml: sample.coarse_temperature: expected a finite number >= 0"):
        config_from_dict({"sample": {"coarse_temperature": -1.0}}, "c.yaml")


def test_old_attribute_names_read_in_python(capsys):
    from codeprior.pipeline.config import demo_config

    cfg = demo_config()
    capsys.readouterr()
    assert cfg.train.steps == cfg.train.max_steps == 1200
    assert "TrainConfig.steps is deprecated, use TrainConfig.max_steps" in capsys.readouterr().err


def test_demo_stage_hashes_are_pinned():
    """The quick demo's stage fingerprints (config slices and dependencies), as before the settings records: a
    change here redoes every finished `make demo` stage, so it must be deliberate (update the digest then)."""
    from codeprior.pipeline.config import demo_config

    text = json.dumps(sorted(_stage_hashes(demo_config()).items()))
    assert hashlib.sha256(text.encode()).hexdigest() == DEMO_HASHES


DEMO_HASHES = "eb53e1c7b46c02ac4a05e2c17565af5d4659fd9471eb35f269c1d262b11ebaf4"  # main at 7f1d9fd


def test_pipeline_threads_zero_is_torchs_default():
    from codeprior.pipeline.config import config_from_dict

    assert config_from_dict({"threads": 0}, "c.yaml").threads == 0
    ns = _subparser(["pipeline"]).parse_args(["c.yaml", "--threads", "0"])
    assert ns.threads == 0


# ------------------------------------------------------------------------------------------------ records
def test_decoder_settings_read_files_of_earlier_versions_silently(capsys):
    """samples.json / FID-hook specs written before the rename say ``init``: read without a warning."""
    capsys.readouterr()
    d = DecoderSettings.coerce({"decoder": "sjd", "init": "repeat", "window": 3})
    assert d.draft_init == "repeat" and capsys.readouterr().err == ""
    with pytest.raises(CodepriorError, match=r"sampling: --draft-init must be one of random, repeat, got 'left'"):
        DecoderSettings(draft_init="left")
    with pytest.raises(CodepriorError, match=r"sampling: --gsd-neighbors: expected an integer >= 0"):
        DecoderSettings(gsd_neighbors=-1)


def test_sample_fingerprint_keeps_the_form_of_earlier_versions():
    """A sample folder's fingerprint: ``temperature`` is the GPT's (the coarse one for coarse-to-fine), the decoder's
    ``draft_init`` is keyed ``init``, AR leaves the decoder out: folders written before resume."""
    from codeprior.sample import _settings_key

    s = SampleSettings(temperature=0.8, coarse_temperature=1.2)
    assert _settings_key(s, coarse=False)["temperature"] == 0.8 and "coarse_temperature" not in _settings_key(s, False)
    assert _settings_key(s, coarse=True)["temperature"] == 1.2 and "decoder" not in _settings_key(s, True)
    spec = SampleSettings(decoder=DecoderSettings("sjd", "gsd", draft_init="repeat"))
    assert _settings_key(spec, coarse=False)["decoder"]["init"] == "repeat"
    assert set(_settings_key(spec, False)) == set(asdict(SampleSettings())) - {"coarse_temperature"}


def test_one_classifier_record(tmp_path):
    """The pipeline's classifier section builds the classifier record (one default per setting, the run's seed),
    the same class the metrics train from; a setting added after runs existed leaves the stage hashes alone at its
    default and changes them when set."""
    import codeprior.evaluate.classifier as clf
    from codeprior.pipeline.config import config_from_dict, demo_config

    assert clf.ClassifierConfig is ClassifierConfig
    cfg = config_from_dict({"seed": 3, "classifier": {"epochs": 2, "lr": 0.01}}, "c.yaml")
    rec = cfg.classifier.settings(cfg.seed)
    assert isinstance(rec, ClassifierConfig)
    assert (rec.epochs, rec.lr, rec.seed, rec.batch_size) == (
        2,
        0.01,
        3,
        default_of(_field(ClassifierConfig, "batch_size")),
    )
    base = demo_config()
    changed = demo_config()
    changed.classifier.label_smoothing = 0.2
    h0, h1 = _stage_hashes(base), _stage_hashes(changed)
    assert h0["classifier"] != h1["classifier"] and h0["tokenizer"] == h1["tokenizer"]
    with pytest.raises(
        CodepriorError, match=r"c.yaml: classifier.label_smoothing: expected a finite number in \[0, 1\]"
    ):
        config_from_dict({"classifier": {"label_smoothing": 1.5}}, "c.yaml")


def _field(record, name):
    return next(f for f in record_fields(record) if f.name == name)
