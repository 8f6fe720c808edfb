"""Interoperability with files written or read by other code.

- :mod:`sparsetrain.interop.gpmt_files`: readers and writers for the output
  files of the reference GPMT code (``prune_log.csv``,
  ``prune_refined_log.csv``, ``layer_sparsities.csv``, ``weight_mask.npy``),
  for users who compare against it or feed our masks to its fine-tuning script.

Submodules are imported explicitly; this package imports nothing on its own.
"""
