"""``python -m codeprior.pipeline train-worker SPEC.json`` (what torchrun launches on every rank)."""

import sys

from codeprior.pipeline.run import _main

sys.exit(_main(sys.argv[1:]))
