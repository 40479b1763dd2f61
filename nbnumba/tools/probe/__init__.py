"""nbnumba-probe: one-pixel parity investigation bundle (C trace vs port trace).

Usage::

    nbnumba-probe --pixel S F [--outdir reports] [--c-parity] [--c-bin PATH]
                  [--c-trace FILE] [--no-c] [--roi-radius R | --full-c]
                  [--tol 1e-6] [--sincg-steps 401] [--no-png] [--timeout S]
                  [--pytest SELECTOR ...] -- <nanoBragg flags>

Writes ``OUTDIR/<UTC stamp>/`` holding:

  trace_py_phi.log          the port's TRACE_PY / TRACE_PY_PHI lines for the pixel
  trace_c_phi.log           the C's TRACE_C / TRACE_C_PHI lines (when a C trace exists)
  c_stdout.txt              the whole stdout of the C trace run (when C was run)
  diff_trace.md             trace_diff report: first divergence, factors, per-φ table
  compare_scaling_traces.json  trace_diff's JSON (per-factor deltas, first divergence)
  sincg_sweep.md/.csv/.png  sincg precision sweep around the pixel's fractional index
                            (.png and sincg_points.png need matplotlib; --no-png: none)
  phistep1/                 the same pixel with -phisteps 1 -osc 0: both traces, both
                            float images over the ROI, notes.txt
  rotation_audit.md         a, b, c and a*, b*, c* per φ step (port) next to the C's values
  roi_metadata.json         pixel, ROI, detector geometry (model.det)
  env.json                  versions, GPU availability, git SHA, C binary checksum
  git_sha.txt               the nbnumba commit that made the bundle (-dirty: uncommitted edits)
  pytest.log                with --pytest SELECTOR (repeatable): those tests, run in this checkout
  commands.txt              commands that reproduce every file
  summary.md                numbered report with an ATTRIBUTION section, ending with
                            "Open questions" (what the evidence leaves unanswered)
  sha256.txt                sha256sum-compatible checksums of every other file

Where the C trace comes from: ``--c-trace FILE`` (a stored log), else the C
program (``--c-bin`` or ``$NB_C_BIN``) run in an empty scratch directory with
``-trace_pixel S F`` and ``OMP_NUM_THREADS=1``, else nowhere (port-only bundle).
``--no-c`` never runs the C program.  ``--timeout S`` stops each program the
probe starts (the C program, ``--pytest``) after S seconds (default: none).

ROI: to keep big detectors fast, C and port both get ``-roi`` over a small box
(``--roi-radius``, default 4 pixels) around the traced pixel, unless the flags
already carry ``-roi`` or ``--full-c`` is given.  nanoBragg.c's φ=0 carry-over
state comes from the pixel rendered before the traced one, so a one-pixel ROI
would change the C trace (the pixel would see the unrotated cell).  With the
box, and a single thread, the pixel before the traced one is inside the box,
giving the same steady state as a full run (any pixel but the first).  The
probe checks this: it runs the C a second time with the ROI set to the traced
pixel's row up to the pixel and records whether the two C traces are identical
(roi_metadata.json ``roi_check``).

The port side never renders the full image: it calls
``nbnumba.model.build_model`` and ``nbnumba.trace.trace_lines``.  Under
-c_parity ``trace_lines`` gives the traced pixel the steady carry-over state
unless it is the first pixel rendered.  (The interpolation latch of -c_parity,
which depends on every earlier pixel, is not emulated without a render.)

Layout (one module per piece of evidence): ``traces`` (setup, both traces,
diff), ``attribution``, ``sincg``, ``phistep1``, ``rotation_audit``,
``environment`` (metadata, git SHA, --pytest, commands), ``summary``;
``run.probe`` calls them in order and ``cli`` is the command line.

Exit status: 0 bundle written and the traces agree (or no C trace); 3 bundle
written and the traces diverge; 2 usage error; 6 a runner failed; 5 I/O error.
"""
from .attribution import attribute
from .cli import main
from .run import probe

__all__ = ["main", "probe", "attribute"]
