"""Benchmark: wall-clock time of `evaluate_images` on 10k samples vs the 10k test split (target < 2 min on 2 cores).

Samples are 10k Fashion-MNIST train images with labels (stand-ins for generated samples: the cost does not
depend on what the pixels show). Timed: feature extraction for samples and reference, FID, KID (100 subsets
of 1000), IS (10 splits), PRDC (k=5, 10k x 10k) and class match; the classifier is loaded once beforehand
(training it is a one-off cached step, reported separately when it had to be trained).

    .venv/bin/python -m benchmarks.evaluation [--num 10000] [--repeats 3] [--classifier CKPT]
"""

from __future__ import annotations

import argparse
import os
import time

from benchmarks._common import SMOKE_HELP, median_time, start_smoke, update_doc_section, write_result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num", type=int, default=10000, help="number of samples (default: 10000)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats; the median is reported (default: 3)")
    ap.add_argument("--classifier", help="classifier checkpoint (default: the cache; trained if missing)")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--data-dir", default=None, help="folder of the IDX files (default: the installed dataset)")
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP + "; random images and a 1-epoch classifier")
    args = ap.parse_args()
    if args.smoke:  # 100 random test images, 50 samples, one round
        from benchmarks._smoke import tiny_run
        from codeprior.pipeline import ClassifierOutputs, read_stage_manifest

        tiny = tiny_run(start_smoke(), until=("classifier",))
        args.classifier = str(ClassifierOutputs.from_manifest(read_stage_manifest(tiny / "classifier")).checkpoint)
        args.data_dir, args.num, args.repeats = str(tiny.parent / "data"), 50, 1

    import torch

    from codeprior.data.images import load_idx
    from codeprior.evaluate.metrics import evaluate_images, make_extractor

    t0 = time.perf_counter()
    extractor = make_extractor("classifier", data=args.data, data_dir=args.data_dir, classifier=args.classifier)
    setup_s = time.perf_counter() - t0
    x, y = load_idx(args.data, "train", args.data_dir)
    images, labels = x[: args.num, :, :, None], y[: args.num]

    def run():
        return evaluate_images(
            images, labels, reference="test-split", feature=extractor, data=args.data, data_dir=args.data_dir
        )

    load_before = os.getloadavg()[0]
    med, times, res = median_time(run, args.repeats)
    fe = res["feature_extractor"]
    data = {
        "num_samples": res["num_samples"],
        "num_reference": res["num_reference"],
        "median_s": med,
        "times_s": times,
        "threads": torch.get_num_threads(),
        "load_average": load_before,
        "classifier_setup_s": setup_s,
        "feature_extractor": fe,
        "metrics": {
            k: res[k]
            for k in ("fid", "kid_mean", "is_mean", "precision", "recall", "density", "coverage", "class_match")
        },
    }
    write_result("evaluation", data)
    from benchmarks._common import load_note, machine

    load_after = os.getloadavg()[0]

    md = f"""## Evaluation time

Command: `.venv/bin/python -m benchmarks.evaluation --num {args.num} --repeats {args.repeats}`
Machine: {machine()}, torch threads {torch.get_num_threads()}. {load_note(load_before, load_after)}

| samples | reference | median (s) | runs (s) | target |
|---|---|---|---|---|
| {res["num_samples"]} | {res["num_reference"]} (test split) | {med:.1f} | {", ".join(f"{t:.1f}" for t in times)} | < 120 s on 2 cores |

Everything `codeprior evaluate` computes is included: classifier features for samples and reference, FID,
KID (100 x 1000), IS (10 splits), PRDC (k=5, N x N distances) and class match. Loading (or, once, training)
the classifier took {setup_s:.1f} s and is not part of the timing. Feature extractor: classifier with test
accuracy {fe["test_accuracy"]:.4f}. As a sanity figure, train-split images against the test split score
FID {res["fid"]:.3f}, precision {res["precision"]:.3f}, recall {res["recall"]:.3f}, class match
{res["class_match"]:.3f}.
"""
    update_doc_section("evaluation", md)
    print(md)


if __name__ == "__main__":
    main()
