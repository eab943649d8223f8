"""`python -m bench`: run the benchmarks, gate them against a baseline, write the report, record baselines.

Exit status: 0 pass, 1 regression (or a failed benchmark / in-run check), 2 usage or data error,
128 + N when stopped by signal N (130 for Ctrl-C, 143 for SIGTERM).
"""

EXIT_PASS, EXIT_REGRESSION, EXIT_USAGE = 0, 1, 2
