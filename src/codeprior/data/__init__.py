"""Datasets: images (Fashion-MNIST / MNIST IDX files, class-per-folder trees) and pre-tokenised code shards."""

from codeprior.data.codes import CodeShards, ShardWriter, code_dtype, read_manifest, write_code_shards
from codeprior.data.images import (
    FASHION_MNIST_CLASSES,
    build_image_dataset,
    center_crop_arr,
    dataset_info,
    load_idx,
    save_image_grid,
)

__all__ = [
    "CodeShards",
    "FASHION_MNIST_CLASSES",
    "ShardWriter",
    "build_image_dataset",
    "center_crop_arr",
    "code_dtype",
    "dataset_info",
    "load_idx",
    "read_manifest",
    "save_image_grid",
    "write_code_shards",
]
