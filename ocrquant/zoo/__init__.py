"""Model zoo: named, pinned, hash-checked OCR models."""

from ocrquant.zoo.fetch import cache_home, fetch, get_entry
from ocrquant.zoo.registry import DEFAULT_CHAIN, ZOO, ZooEntry

__all__ = ["DEFAULT_CHAIN", "ZOO", "ZooEntry", "cache_home", "fetch", "get_entry"]
