"""Test support: synthetic inputs (:mod:`.synth`) and golden-corpus access (:mod:`.golden`).

Neither module imports the simulator, so both can be used (and
``tools/make_golden.py`` can run) even while the engine is broken.
:mod:`.refcheck` (the kernel against ``nbnumba.reference``, for
tests/test_reference.py and ``tools/fuzz.py reference``) imports it when called.
"""
