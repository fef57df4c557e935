"""codeprior.evaluate: sample-quality metrics on features of an in-project classifier.

No Inception weights exist offline, so the default feature extractor is a small CNN trained on the
dataset's train split (:mod:`.classifier`, cached). FID / KID / Inception-style score / PRDC / class match
live in :mod:`.metrics` (torchmetrics and prdc do the maths), optional standard Inception features in
:mod:`.inception` (torch-fidelity), tokenizer round-trip metrics in :mod:`.tokenizer_eval` and the prior
substitution test in :mod:`.substitution`.
"""

from codeprior.evaluate.classifier import (
    Classifier,
    ClassifierConfig,
    LoadedClassifier,
    default_classifier_path,
    get_classifier,
    load_classifier,
    save_classifier,
    train_classifier,
)
from codeprior.evaluate.features import ClassifierFeatures, FeatureExtractor, PrecomputedFeatures
from codeprior.evaluate.metrics import (
    class_match_rate,
    evaluate_images,
    fid_from_features,
    format_table,
    inception_score_from_logits,
    kid_from_features,
    load_samples_npz,
    make_extractor,
    prdc_from_features,
)
from codeprior.evaluate.substitution import ClusterSampler, substitute_codes, substitution_test
from codeprior.evaluate.tokenizer_eval import evaluate_tokenizer

__all__ = [
    "Classifier",
    "ClassifierConfig",
    "LoadedClassifier",
    "default_classifier_path",
    "get_classifier",
    "load_classifier",
    "save_classifier",
    "train_classifier",
    "ClassifierFeatures",
    "FeatureExtractor",
    "PrecomputedFeatures",
    "class_match_rate",
    "evaluate_images",
    "fid_from_features",
    "format_table",
    "inception_score_from_logits",
    "kid_from_features",
    "load_samples_npz",
    "make_extractor",
    "prdc_from_features",
    "ClusterSampler",
    "substitute_codes",
    "substitution_test",
    "evaluate_tokenizer",
]
