"""Diagnostic probes (forward passes, no training); each module says how to run it."""
