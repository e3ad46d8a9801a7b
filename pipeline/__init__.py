"""basewatch: Sentinel-2 change detection for fixed sites.

The import package is ``pipeline``; the distribution and the command are ``basewatch``.
"""

__version__ = "0.1.0"
