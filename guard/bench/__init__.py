"""Benchmarks: the consequence benchmark harness and the guard's own performance figures.

- `guard bench` (guard.cli.bench) runs a suite through the guard: loaders in `suites`, the
  runner in `runner`, judges in `judges` and `semantic`, metrics in `metrics`, outputs in
  `report`, the reference-answer oracle in `oracle`. See guard/bench/README.md.
- `python -m guard.bench.overhead`: the guard's overhead over a bare model call.
"""
