"""Micro-benchmarks of platform pieces against reference implementations."""
