"""What kind of file was given where another was wanted: the hint an input
error adds when, say, an MTZ reaches ``-hkl`` or a CBF reaches ``-mask``.

Only the readers' error paths call it (a file that reads is never sniffed).
The kinds are told from the first bytes, as ``file(1)`` does: magic numbers
for the binary formats, the first records for the text ones.
"""
from __future__ import annotations

import shlex
from typing import Optional

__all__ = ["kind_of", "misfed_hint"]

#: kind -> how it is named in a message
NAMES = {
    "mtz": "an MTZ reflection file",
    "model": "an atomic model (PDB or mmCIF)",
    "refln_cif": "an mmCIF reflection file",
    "expt": "a DIALS experiment list",
    "smv": "an SMV (ADSC) image",
    "cbf": "a CBF image",
    "hdf5": "an HDF5 (NeXus) file",
    "tiff": "a TIFF image",
    "pgm": "a PGM image",
    "gzip": "gzip-compressed",
    "bzip2": "bzip2-compressed",
}

#: a PDB file has one of these among its first records (a REMARK or HEADER alone
#: could head another text file)
_PDB_RECORDS = ("CRYST1", "ATOM  ", "HETATM")


def kind_of(data: bytes) -> Optional[str]:
    """A key of NAMES for the file whose bytes start ``data``, or None."""
    head = data[:4096]
    if head.startswith(b"MTZ "):
        return "mtz"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "hdf5"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"BZh"):
        return "bzip2"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    if head.startswith(b"###CBF") or b"_array_data.data" in head:
        return "cbf"
    if head[:2] in (b"P5", b"P2") and head[2:3] in (b"\n", b" ", b"\r", b"\t", b"#"):
        return "pgm"
    text = head.decode("latin-1")
    stripped = text.lstrip()
    if stripped.startswith("{"):
        if "HEADER_BYTES" in text[:512]:
            return "smv"
        if '"ExperimentList"' in text or '"__id__"' in text:
            return "expt"
        return None
    if stripped.startswith("data_") or "\n_atom_site." in text or "\nloop_" in text:
        if "_refln." in text:
            return "refln_cif"
        if "_atom_site." in text or "_cell.length_a" in text:
            return "model"
        return None
    if any(line.startswith(_PDB_RECORDS) for line in text.splitlines()[:200]):
        return "model"
    return None


def misfed_hint(data: bytes, name: str, wanted: str) -> str:
    """"; it is KIND: what to do" for a file ``name`` whose bytes are ``data``
    given where ``wanted`` ("hkl", "mat", "smv", or "columns": -sourcefile,
    -stol) belongs; "" when the kind is
    unknown or is the wanted one."""
    kind = kind_of(data)
    if kind is None or (wanted == "smv" and kind == "smv"):
        return ""
    what = NAMES[kind]
    name = shlex.quote(name)
    if kind in ("gzip", "bzip2"):
        return "; it is %s: decompress it first" % what
    if wanted == "hkl":
        if kind == "mtz":
            return ("; it is %s: 'nbnumba-sf %s -o P1.hkl' writes its amplitudes as an 'h k l F' "
                    "table, expanded to P1" % (what, name))
        if kind == "model":
            return ("; it is %s: 'nbnumba-sf %s -dmin 2 -o P1.hkl' computes its structure factors"
                    % (what, name))
        if kind == "refln_cif":
            return ("; it is %s: convert it to MTZ ('gemmi cif2mtz'), then use nbnumba-sf" % what)
        if kind == "expt":
            return "; it is %s, not structure factors ('nbnumba-expt %s' gives its flags)" % (what, name)
        return "; it is %s, not a structure-factor table" % what
    if wanted == "mat":
        if kind == "expt":
            return ("; it is %s: 'nbnumba-expt %s --mat-out A.mat' writes its crystal as a MOSFLM "
                    "matrix and prints the other flags" % (what, name))
        return "; it is %s, not a MOSFLM orientation matrix" % what
    if wanted == "smv":
        return "; it is %s: -img and -mask read SMV (ADSC) images only" % what
    if wanted == "columns":
        return "; it is %s, not a table of numbers" % what
    return ""
