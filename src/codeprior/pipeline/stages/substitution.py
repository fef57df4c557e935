"""Stage ``substitution``: replace every code by a random member of its cluster and measure the damage."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from codeprior.data.images import save_image_grid
from codeprior.evaluate.substitution import substitute_codes, substitution_reference, substitution_test
from codeprior.evaluate.tokenizer_eval import decode_codes, encode_images, to_uint8
from codeprior.pipeline.config import PipelineConfig
from codeprior.pipeline.engine import StageContext
from codeprior.pipeline.outputs import StageOutputs
from codeprior.pipeline.registry import StageDef, outputs_of
from codeprior.pipeline.stages.classifier import ClassifierOutputs
from codeprior.pipeline.stages.common import describe_features, extractor, load_vq, test_images_uint8
from codeprior.pipeline.stages.priors import PriorsOutputs
from codeprior.pipeline.stages.tokenizer import checkpoint_of
from codeprior.priors import load_prior
from codeprior.report import Doc, ReportSection, read_json, scalar_keys
from codeprior.utils.io import write_json_atomic

__all__ = ["STAGE", "FILES", "SubstitutionOutputs", "run"]


class FILES:
    """What the stage writes in ``RUN/substitution/``."""

    result = "substitution.json"  # {"rows": [table row per prior], "note", "results": {prior: full result}}
    examples = "examples.png"  # originals, reconstructions, then one substituted row per prior


@dataclass(frozen=True)
class SubstitutionOutputs(StageOutputs):
    """One table row per prior, and the untouched reconstructions' rFID."""

    rows: list[dict]
    baseline_rfid: float


def run(cfg: PipelineConfig, ctx: StageContext, device: str) -> SubstitutionOutputs:
    """The substitution test of every extracted prior on ``substitution.num_images`` test images."""
    vq = load_vq(cfg, checkpoint_of(ctx), "cpu")  # codeprior.evaluate's encode/decode helpers work on the CPU
    images, _ = test_images_uint8(cfg, cfg.substitution.num_images)
    ext = extractor(cfg, ClassifierOutputs.from_manifest(ctx.upstream["classifier"]).checkpoint)
    files = PriorsOutputs.from_manifest(ctx.upstream["priors"]).files
    rows, full = [], {}
    n_show = min(8, len(images))
    codes = encode_images(vq, images[:n_show])
    orig = torch.as_tensor(images[:n_show])
    orig = orig.unsqueeze(1) if orig.dim() == 3 else orig.permute(0, 3, 1, 2)
    grid_rows = [orig, to_uint8(decode_codes(vq, codes))]
    ref = substitution_reference(vq, images, ext)  # shared by every prior
    for method, f in files.items():
        prior = load_prior(str(f))
        res = substitution_test(
            vq, prior.token_to_cluster, images, ext, draws=cfg.substitution.draws, seed=cfg.seed, reference=ref
        )
        full[method] = res
        rows.append(
            {
                "prior": method,
                "k": res["k"],
                "singleton share": res["singleton_share"],
                "FID vs recon": res["fid_vs_recon"]["mean"],
                "FID std": res["fid_vs_recon"]["std"],
                "MSE vs recon": res["mse_vs_recon"]["mean"],
                "PSNR vs recon (dB)": res["psnr_vs_recon"]["mean"],
                "FID vs originals": res["fid_vs_originals"]["mean"],
                "codes changed": res["changed_share"]["mean"],
            }
        )
        g = torch.Generator().manual_seed(cfg.seed)
        grid_rows.append(to_uint8(decode_codes(vq, substitute_codes(codes, prior.token_to_cluster, g))))
    save_image_grid(torch.cat([r.to(torch.uint8) for r in grid_rows]), ctx.dir / FILES.examples, nrow=n_show)
    any_res = next(iter(full.values()))
    note = (
        f"{any_res['num_images']} test images, {any_res['draws']} draws; untouched reconstructions vs originals: "
        f"rFID {any_res['baseline_rfid']:.3f}. Features: {describe_features(any_res['feature_extractor'])}."
    )
    write_json_atomic(ctx.dir / FILES.result, {"rows": rows, "note": note, "results": full})
    return SubstitutionOutputs(rows=rows, baseline_rfid=any_res["baseline_rfid"])


def report_substitution(doc: Doc, run_dir: Path, manifests: dict[str, dict]) -> None:
    """The report's substitution section."""
    if not doc.section("Prior substitution test", "substitution", manifests.get("substitution")):
        return
    res = read_json(run_dir / "substitution" / FILES.result) or {}
    rows = res.get("rows", [])
    if rows:
        keys = scalar_keys(rows)
        doc.table([k.replace("_", " ") for k in keys], [[r.get(k) for k in keys] for r in rows])
    doc.p(
        "Every code of a test image is replaced by a random member of its cluster; the decoded images are "
        "compared with the untouched reconstructions (averaged over several draws). A prior whose clusters hold "
        "interchangeable codes damages the images least. " + (res.get("note") or "")
    )
    doc.image(
        run_dir / "substitution" / FILES.examples,
        "Originals (first row), reconstructions (second row), then one substitution per prior in the "
        "order of the table (one row each)",
        optional=True,
    )


STAGE = StageDef(
    "substitution",
    run=lambda b, ctx, _: run(b.cfg, ctx, b.device),
    config=lambda b, _: {**b.slices["substitution"], **b.seed},
    deps=("data", "tokenizer", "priors", "classifier"),
    instances=lambda cfg: [("substitution", None)] if cfg.substitution.enabled else [],
    description="prior substitution test (random cluster member per code)",
    outputs=outputs_of(FILES),
    report=(ReportSection(60, report_substitution),),
)
