"""Performance benchmarks for nbnumba (pytest-benchmark suite, port-vs-C
comparison, history and scaling plots).  See docs/performance.md."""
