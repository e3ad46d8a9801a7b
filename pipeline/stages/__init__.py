"""Orchestration: the stages of a site's run, watch, pair, series, align, tiles.

Only stages decide when lazy results are computed.
"""
