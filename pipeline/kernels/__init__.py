"""Pure kernels: arrays in, arrays out (numpy and dask); no I/O, no stages, no CLI."""
