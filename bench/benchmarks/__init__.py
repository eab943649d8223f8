"""The pytest-benchmark suite (one test per kind, test_kinds.py); run through `python -m bench run`, which also gates and reports."""
