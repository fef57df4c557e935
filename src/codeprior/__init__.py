"""codeprior: codebook priors (DCPE, k-means, balanced k-means) for discrete-token AR image generation."""

__version__ = "0.1.0"
