"""ocrquant: OCR models from their training framework to fast, accurate INT8, proven with OCR metrics."""

__version__ = "0.1.0"
