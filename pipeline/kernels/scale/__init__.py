"""The scale path (pure): the fused per-pixel change core and tile labelling.

The fused core has a numba path and a plain reference; labels are chunk-border-correct.
"""
