"""Suite-wide settings.

CLI runs started by the tests (in-process or as subprocesses) must not start
background builds of the start-up library (nbnumba.kernels.native): tests/
test_aot.py builds one on purpose, in a temporary directory.
"""
import os

os.environ.setdefault("NBNUMBA_AOT_AUTOBUILD", "0")
