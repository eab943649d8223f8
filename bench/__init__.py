"""Benchmarks, timing, the regression gate and the report for the Cosmos3 stages."""
