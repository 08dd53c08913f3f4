"""darkroom.analysis: time-domain analysis of light curves (pure: tables and arrays in, results out).

* :mod:`~darkroom.analysis.lcfile` -- the light-curve file format (Parquet) and readers of
  CSV/ECSV/Parquet/FITS and IRSA ZTF light curves; split per band and season.
"""
