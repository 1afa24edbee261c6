"""depth_common: the library behind every stage of the depth-estimation pipeline.

Components in ``components/`` only adapt KFP artifacts to calls into this package; it never
imports ``kfp``.
"""

__version__ = "0.1.0"
