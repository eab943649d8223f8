"""Judging a run: the gate's rules against a baseline and inside the run, their statistics, and the report; it never times."""
