"""ocrquant: OCR models from their training framework to fast, accurate INT8, proven with OCR metrics."""

import os

# Intel MKL (torch's BLAS) picks code paths by buffer alignment unless told to be reproducible, so the
# same learning run can compute other floats: distill on PP-OCRv6 small det wrote other bytes in two
# runs of one command. 30 identical backward passes through that model's QDQ graph gave 2, 2, 1 and 4
# distinct gradients in four processes with MKL's default, 1 in each with MKL_CBWR=AUTO, at 1.56 and
# 1.53 s a pass (2-core AMX Xeon, ``python benchmarks/repeatability.py --model det.int8.onnx
# --passes 30 --processes 4``). AUTO: the same results on one CPU and thread count. MKL reads it at
# its first call, so it is set before torch can make one; a value the user set is kept.
os.environ.setdefault("MKL_CBWR", "AUTO")

__version__ = "0.1.0"
