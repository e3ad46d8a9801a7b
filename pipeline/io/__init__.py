"""Everything that touches the network or disk.

STAC catalogs, loading, rasters, the store, alerts, atomic writes, progress, the dask cluster.
"""
