"""Test support: synthetic inputs (:mod:`.synth`) and golden-corpus access (:mod:`.golden`).

Neither module imports the simulator, so both can be used (and
``tools/make_golden.py`` can run) even while the engine is broken.
"""
