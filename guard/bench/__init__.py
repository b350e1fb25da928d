"""Benchmarks: the consequence benchmark harness and the guard's own performance figures."""
