"""Exporting trained models: the ``sparse`` safetensors format (smaller the sparser the model),
plain dense safetensors, and ONNX (checked with onnxruntime).

:mod:`.sparse_format` holds :func:`save_sparse` / :func:`load_sparse` and the format's
description; :mod:`.onnx_export` the ONNX export and its check. Importing this package imports
torch and safetensors, not onnx (that is imported only when exporting ONNX).
"""

from __future__ import annotations

from .sparse_format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    ExportFileError,
    load_sparse,
    load_sparse_masks,
    load_sparse_metadata,
    save_dense,
    save_sparse,
)

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "ExportFileError", "load_sparse", "load_sparse_masks",
           "load_sparse_metadata", "save_dense", "save_sparse"]
