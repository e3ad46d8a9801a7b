"""Scores against ground truth: the only readers of truth.

The site evaluation, the detection sweep and the real-background port benchmarks.
"""
