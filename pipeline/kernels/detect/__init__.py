"""Change detection kernels (pure): multi-date, pairwise, one-date, clouds, noise.

Also normalisation, objects, occupancy and the calibrated confidence model.
"""
