"""Measuring: the one measuring loop, its controls, each kind's workload, the work counters, the collector; it never judges."""
