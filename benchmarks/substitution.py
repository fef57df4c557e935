"""Prior substitution table: k-means vs DCPE (and balanced k-means) on a trained Fashion-MNIST tokenizer.

For each prior (method, k), extracted from the tokenizer's own codebook with ``codeprior.priors.extract``:

* the substitution test (``codeprior.evaluate.substitution.substitution_test``): encode the first ``--num`` test
  images, replace every code by a uniformly random member of its cluster, decode, and compare with the untouched
  reconstructions (FID on the in-project classifier's features, pixel MSE / PSNR), mean ± std over ``--draws``;
* the geometric quality metrics (``codeprior.priors.quality.prior_quality``) on the geometry the prior was
  extracted on, so geometry and substitution can be read in one table.

Every prior sees the same images and the same draw seed. The feature classifier is the cached one
(``~/.cache/codeprior/classifier-fashion-mnist.pt``; trained on first use).

    .venv/bin/python -m benchmarks.substitution --tokenizer VQ.pt [--priors kmeans:512 dcpe:512 ...]
                                                [--num 2000] [--draws 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import SMOKE_HELP, start_smoke, update_doc_section, write_result
from codeprior.codebook import load_codebook
from codeprior.errors import CodepriorError
from codeprior.evaluate.classifier import load_split
from codeprior.evaluate.metrics import make_extractor
from codeprior.evaluate.substitution import substitution_reference, substitution_test
from codeprior.models import load_vq
from codeprior.priors.extract import METHODS, extract
from codeprior.priors.quality import prior_quality

DEFAULT_PRIORS = ["kmeans:512", "dcpe:512", "balanced-kmeans:512", "kmeans:2048", "dcpe:2048"]


def parse_prior_spec(spec: str) -> tuple[str, int]:
    """``method:k`` -> (method, k)."""
    method, _, k = spec.partition(":")
    if method not in METHODS or not k.isdigit() or int(k) < 1:
        raise CodepriorError(f"--priors: {spec!r} is not METHOD:K with METHOD in {', '.join(METHODS)}")
    return method, int(k)


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pm(d: dict[str, Any], fmt: str) -> str:
    return f"{d['mean']:{fmt}} ± {d['std']:{fmt}}"


def _opt(v: Any, fmt: str) -> str:
    return "-" if v is None else f"{v:{fmt}}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--tokenizer",
        metavar="PATH",
        help="trained VQ checkpoint, e.g. from `codeprior tokenizer train` (required unless --doc-only)",
    )
    ap.add_argument(
        "--priors",
        nargs="+",
        default=DEFAULT_PRIORS,
        metavar="METHOD:K",
        help=f"priors to extract and test (default: {' '.join(DEFAULT_PRIORS)})",
    )
    ap.add_argument("--data", default="fashion-mnist", help="dataset (default fashion-mnist)")
    ap.add_argument("--data-dir", metavar="DIR", help="directory holding the IDX files")
    ap.add_argument("--classifier", metavar="CKPT", help="feature classifier (default: the cached one)")
    ap.add_argument("--num", type=int, default=2000, help="first N test images (default 2000)")
    ap.add_argument("--draws", type=int, default=3, help="substitution draws averaged (default 3)")
    ap.add_argument("--seed", type=int, default=0, help="extraction and draw seed (default 0)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the host is shared)")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    ap.add_argument(
        "--doc-only",
        action="store_true",
        help="only re-render the docs section from benchmarks/results/substitution.json",
    )
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP + "; a 5-step tokenizer on random images")
    a = ap.parse_args()
    if a.smoke:  # k-means and DCPE at k = 8 on 20 random test images, one draw
        from benchmarks._smoke import tiny_run
        from codeprior.pipeline import ClassifierOutputs, TokenizerOutputs, read_stage_manifest

        run = tiny_run(start_smoke(), until=("tokenize", "classifier"))
        a.tokenizer = str(TokenizerOutputs.from_manifest(read_stage_manifest(run / "tokenizer")).checkpoint)
        a.classifier = str(ClassifierOutputs.from_manifest(read_stage_manifest(run / "classifier")).checkpoint)
        a.data_dir, a.priors, a.num, a.draws, a.doc_only = (
            str(run.parent / "data"),
            ["kmeans:8", "dcpe:8"],
            20,
            1,
            False,
        )
    if a.doc_only:
        import json

        from benchmarks._common import RESULTS

        update_doc_section("substitution", render(json.loads((RESULTS / "substitution.json").read_text())))
        return
    if not a.tokenizer:
        ap.error("--tokenizer is required")
    if a.num < 2 or a.draws < 1:
        ap.error("need --num >= 2 and --draws >= 1")
    specs = [parse_prior_spec(s) for s in a.priors]
    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()

    tok = Path(a.tokenizer)
    if not tok.is_file():
        raise CodepriorError(f"{tok}: no such tokenizer checkpoint")
    codebook = load_codebook(tok)
    vq = load_vq(tok)
    stored = torch.load(tok, map_location="cpu", weights_only=True)
    tok_steps = stored.get("steps") if isinstance(stored, dict) else None
    tok_model = (stored.get("args") or {}).get("model") if isinstance(stored, dict) else None
    del stored
    images, _ = load_split(a.data, "test", a.data_dir)
    images = images[: a.num]
    extractor = make_extractor("classifier", data=a.data, data_dir=a.data_dir, classifier=a.classifier)
    fe = extractor.describe()

    results = []
    ref = substitution_reference(vq, images, extractor)  # shared by every prior
    for method, k in specs:
        print(f"== {method} k={k}: extracting ...", flush=True)
        prior = extract(codebook, method, k, normalize=True, seed=a.seed, progress=False, source=tok)
        quality = prior_quality(prior, codebook)
        sub = substitution_test(
            vq, prior.token_to_cluster, images, extractor, draws=a.draws, seed=a.seed, reference=ref
        )
        print(
            f"   FID vs recon {_pm(sub['fid_vs_recon'], '.3f')}, MSE vs recon {_pm(sub['mse_vs_recon'], '.5f')}, "
            f"nn-same {quality['nn_same_cluster_share']:.3f}, extraction {prior.metadata['seconds']:.1f}s, "
            f"test {sub['seconds']:.1f}s",
            flush=True,
        )
        results.append(
            {
                "method": method,
                "k": k,
                "extract_seconds": prior.metadata["seconds"],
                "prior_sha256": prior.sha256(),
                "substitution": sub,
                "quality": quality,
            }
        )

    base = results[0]["substitution"]
    result = {
        "tokenizer": {
            "path": str(tok),
            "sha256": file_sha256(tok),
            "steps": tok_steps,
            "model": tok_model,
            "codebook": list(codebook.shape),
        },
        "data": a.data,
        "split": "test",
        "num_images": a.num,
        "draws": a.draws,
        "seed": a.seed,
        "threads": torch.get_num_threads(),
        "feature_extractor": fe,
        "baseline_rfid": base["baseline_rfid"],
        "baseline_mse": base["baseline_mse"],
        "seconds": time.perf_counter() - t_start,
        "results": results,
    }
    write_result("substitution", result)
    if not a.no_doc:
        update_doc_section("substitution", render(result))
    print(f"done in {time.perf_counter() - t_start:.0f}s")


def render(res: dict[str, Any]) -> str:
    """The docs/benchmarks.md section for a result dict (as written to benchmarks/results/substitution.json)."""
    results, fe, tk = res["results"], res["feature_extractor"], res["tokenizer"]
    specs = " ".join(f"{r['method']}:{r['k']}" for r in results)
    cmd = (
        f"python -m benchmarks.substitution --tokenizer {tk['path']} --priors {specs} --num {res['num_images']} "
        f"--draws {res['draws']} --seed {res['seed']}"
    )
    sub_rows = [
        "| prior | k | FID vs recon | MSE vs recon | PSNR vs recon (dB) | FID vs originals | codes changed |",
        "|---|---|---|---|---|---|---|",
    ]
    geo_rows = [
        "| prior | k | size min / median / max | singleton clusters | codes in singletons | "
        "intra-cluster mean pair dist | mean dist to nearest other-cluster code | NN in same cluster | "
        "extraction (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s, q = r["substitution"], r["quality"]
        sz = q["sizes"]
        name = r["method"]
        sub_rows.append(
            f"| {name} | {r['k']} | {_pm(s['fid_vs_recon'], '.3f')} | {_pm(s['mse_vs_recon'], '.5f')} | "
            f"{_pm(s['psnr_vs_recon'], '.2f')} | {_pm(s['fid_vs_originals'], '.3f')} | "
            f"{s['changed_share']['mean']:.3f} |"
        )
        geo_rows.append(
            f"| {name} | {r['k']} | {sz['min']} / {sz['median']:g} / {sz['max']} | "
            f"{100 * sz['singleton_cluster_share']:.1f}% | {100 * sz['singleton_code_share']:.1f}% | "
            f"{_opt(q['intra_mean_pairwise'], '.4f')} | {_opt(q['nearest_other_mean'], '.4f')} | "
            f"{100 * q['nn_same_cluster_share']:.1f}% | {r['extract_seconds']:.2f} |"
        )
    findings = []
    for k in sorted({r["k"] for r in results}):
        by = {r["method"]: r for r in results if r["k"] == k}
        if "kmeans" in by and "dcpe" in by:
            km, dc = by["kmeans"]["substitution"], by["dcpe"]["substitution"]
            f_km, f_dc = km["fid_vs_recon"]["mean"], dc["fid_vs_recon"]["mean"]
            m_km, m_dc = km["mse_vs_recon"]["mean"], dc["mse_vs_recon"]["mean"]
            better = "DCPE" if f_dc < f_km else "k-means"
            findings.append(
                f"- k = {k}: FID vs recon k-means {f_km:.3f} vs DCPE {f_dc:.3f}, MSE {m_km:.5f} vs "
                f"{m_dc:.5f}: **{better}** substitutes better on FID here; nearest neighbour in the same "
                f"cluster k-means {100 * by['kmeans']['quality']['nn_same_cluster_share']:.1f}% vs DCPE "
                f"{100 * by['dcpe']['quality']['nn_same_cluster_share']:.1f}%."
            )
    steps = f", {tk['steps']} training steps" if tk.get("steps") is not None else ""
    base_fid, base_mse = res["baseline_rfid"], res["baseline_mse"]
    return f"""## Prior substitution: k-means vs DCPE

`{cmd}`  
Tokenizer: `{tk["path"]}` ({tk.get("model") or "VQ"}{steps}; codebook {tk["codebook"][0]} x {tk["codebook"][1]},
L2-normalised; sha256 `{tk["sha256"][:16]}…`). Priors are extracted from its codebook on L2-normalised rows
(seed {res["seed"]}). Images: the first {res["num_images"]} Fashion-MNIST test images; {res["draws"]} substitution
draws per prior (mean ± std over draws; the same images and draw seed for every prior). Feature extractor: the
in-project **{fe["name"]}** (`{Path(fe["path"]).name if fe.get("path") else "-"}`, {fe["num_features"]}-d features,
test accuracy **{fe["test_accuracy"]:.4f}**); FIDs on these features compare priors with each other, not with
published Inception FIDs. Untouched reconstructions vs originals: rFID {base_fid:.3f}, MSE {base_mse:.5f}.

Substitution (every code replaced by a uniformly random member of its cluster; lower = the decoder treats a
cluster's codes more alike):

{chr(10).join(sub_rows)}

Geometry of the same priors (`prior_quality`, L2-normalised codebook; distances are Euclidean on the unit sphere):

{chr(10).join(geo_rows)}

{chr(10).join(findings)}

"codes changed" is the share of positions whose code actually differs after substitution (singleton clusters never
change, and a member can draw itself). Substitution cost depends on cluster sizes as much as on compactness: a
uniform draw from a large cluster moves further than one from a small cluster, so a prior that puts many codes in
a few big clusters (average linkage does) can score worse on substitution while scoring better on
nearest-neighbour agreement. Read the two tables together. One tokenizer and one seed: differences within a few
std are not significant.
"""  # noqa: W291  (the two spaces after `{cmd}` are a Markdown line break)


if __name__ == "__main__":
    try:
        main()
    except CodepriorError as e:  # bad input: one line, exit status 2 (as the CLI does)
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
