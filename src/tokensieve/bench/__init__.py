"""Benchmarks: real tasks, readers, metrics and side-by-side runs against the anchors."""
