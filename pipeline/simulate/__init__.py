"""The SIMULATED demo catalog: Sentinel-2 L2A-like COGs, STAC Items and ground truth.

``build_demo_catalog`` renders, for each demo site, a high-resolution scene (surfaces and
objects from ``seeds/scenario/<site>.yaml``) and images it on the acquisition dates the way
Sentinel-2 would (area average, misregistration, PSF, clouds, SCL, noise, DN offset). Only this
package and ``pipeline.evaluation.site`` ever read the ground truth it writes.
"""

from pipeline.simulate.build import build_demo_catalog

__all__ = ["build_demo_catalog"]
