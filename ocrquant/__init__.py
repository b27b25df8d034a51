"""ocrquant: OCR models from their training framework to fast, accurate INT8, proven with OCR metrics."""

import os

# Intel MKL (torch's BLAS) picks code paths by buffer alignment unless told to be reproducible, so the
# same learning run could give other floats in another process: distill on PP-OCRv6 small det wrote
# other bytes in two runs of one command, and the gradients of its QDQ graph differed in 2 of 10
# identical backward passes, in none of 10 with MKL_CBWR=AUTO, at the same speed (14.6 s;
# ``python benchmarks/repeatability.py``). AUTO: the same results on one CPU and thread count. Read at
# MKL's first call, so set before torch can make one; a value the user set is kept.
os.environ.setdefault("MKL_CBWR", "AUTO")

__version__ = "0.1.0"
