"""Every file format nbnumba reads or writes, one module per format.

nanoBragg's own files: ``smv`` (SMV/ADSC images, also the series' SMV frames),
``hkl`` (-hkl text and the Fdump.bin cache), ``floatimage``, ``pgm``, ``mat``
(MOSFLM orientation matrix), ``textcols`` (source and S(Q) tables).  Series
frames for other programs: ``cbf`` (miniCBF via fabio), ``nexus`` (NeXus/NXmx via
h5py), with ``frames`` (the geometry and place in the series every frame file
records).  ``atomic`` writes every output atomically.
"""
