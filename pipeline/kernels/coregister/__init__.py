"""Co-registration kernels: shift, refinement, application, local and affine models.

Pure: arrays in, arrays out.
"""
