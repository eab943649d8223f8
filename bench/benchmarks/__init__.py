"""pytest-benchmark modules; run through `python -m bench run`, which also gates and reports."""
