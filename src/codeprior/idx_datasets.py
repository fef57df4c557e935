"""The built-in IDX datasets by name: the one registry data loading, the CLI and config checks read.

Torch- and numpy-free, so config validation and ``--help`` need neither; :mod:`codeprior.data.images` reads the
files. Every IDX dataset here is 28x28 greyscale with 10 classes; adding one is its entry (the files are looked up
as ``<data_dir>/train-images-idx3-ubyte[.gz]`` etc.).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["IdxDataset", "IDX_DATASETS"]


@dataclass(frozen=True)
class IdxDataset:
    """One IDX dataset: its class names (label order) and what to tell a user who does not have its files."""

    name: str
    class_names: tuple[str, ...]
    install_hint: str


#: every IDX dataset by name (``in``, iteration and ``" or ".join(IDX_DATASETS)`` read the names)
IDX_DATASETS: dict[str, IdxDataset] = {
    d.name: d
    for d in (
        IdxDataset(
            "fashion-mnist",
            (
                "T-shirt/top",
                "Trouser",
                "Pullover",
                "Dress",
                "Coat",
                "Sandal",
                "Shirt",
                "Sneaker",
                "Bag",
                "Ankle boot",
            ),
            "apt-get install dataset-fashion-mnist",
        ),
        IdxDataset("mnist", tuple(str(i) for i in range(10)), "download the mnist IDX files"),
    )
}
