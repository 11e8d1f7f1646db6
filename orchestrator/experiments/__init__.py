"""Experiments on registered models: A/B tests and canary rollouts.

Both sit on one alias of a registered model (orchestrator/versions.py), such
as chat@production: while one runs, the requests that reach the model through
that alias are split between versions, each request's outcome is counted per
version, and the experiment ends by moving the alias (a rollout that
completes, an A/B test that promotes its winner) or by leaving it where it was.

- stats.py: the two-proportion z-test, Welch's t-test and the winner rule
- outcomes.py: per-version counts, sums and a latency histogram
- assignment.py: sticky, weighted choice by a hash of the user id
- ab_test.py, canary.py: one experiment of each kind: its spec and its rules
- store.py: experiments.db, so that a restart resumes where things were
- controller.py: steers requests, counts outcomes, runs the rules every second
"""
