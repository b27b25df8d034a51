"""Searches over variants of a quantized model (``auto``'s range and algorithm search) and where their
trials run (:mod:`ocrquant.tuning.executor`: in-process, local workers, Ray). Sits above quantization,
evaluation and analysis; nothing below imports it except the pipeline's ``--method auto`` door."""
