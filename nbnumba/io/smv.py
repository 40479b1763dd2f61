"""SMV (ADSC) image files: reader, nanoBragg-identical writer, C ``%g`` formatting.

Layout written by nanoBragg (and by :func:`write_smv`): an ASCII header that
starts with ``{`` and a newline, one ``KEY=VALUE;`` entry per line (the C
program forgets the ``;`` after ``DIALS_ORIGIN``), a closing ``}`` followed by
a form feed, spaces up to byte 512, then ``SIZE1*SIZE2`` unsigned 16-bit
integers in little-endian order, fast index (SIZE1) varying fastest.

Reading (:func:`read_smv`) accepts any header size given by ``HEADER_BYTES``
and either byte order.  Values are looked up in two ways:

* ``header[key]`` -- the exact key, last occurrence wins;
* :func:`header_value` -- nanoBragg's ``ValueOf`` rules: the *last*
  occurrence of ``key`` as a *substring* anywhere in the header text, then
  the number after the next ``=``.  This is what the C program uses for
  ``-img``/``-mask``, and it has visible consequences on nanoBragg's own
  headers: ``DISTANCE`` finds ``CLOSE_DISTANCE`` (written later) and
  ``ORGX`` finds ``XDS_ORGX``.  Pass ``exact=True`` for a plain lookup.
"""

from __future__ import annotations

import math
import numbers
import re
import warnings
from typing import Mapping, Sequence, Tuple, Union

import numpy as np

from nbnumba.errors import InputFileError, NBWarning
from nbnumba.io._args import IOArgumentError, as_image, path_name, read_bytes
from nbnumba.io._cnum import c_atof
from nbnumba.io.atomic import atomic_open
from nbnumba.io.sniff import misfed_hint

__all__ = [
    "SMVHeader",
    "RTD",
    "format_g",
    "c_atof",
    "read_smv",
    "header_value",
    "smv_header_text",
    "write_smv",
    "nanobragg_smv_fields",
    "reader_smv_fields",
    "write_frame",
    "read_frame",
    "smv_date",
    "NOMINAL_EPOCH_UNIX",
]

#: C's ``M_1_PI`` is the double nearest 1/pi; ``1/math.pi`` rounds to that same double.
M_1_PI = float.fromhex("0x1.45f306dc9c883p-2")
#: nanoBragg's radians-to-degrees factor, ``180.0*M_1_PI``.
RTD = 180.0 * M_1_PI

SMV_HEADER_BYTES = 512
#: keys whose line nanoBragg ends without ';'
NO_SEMICOLON_KEYS = frozenset({"DIALS_ORIGIN"})

Fields = Union[Sequence[Tuple[str, str]], Mapping[str, str]]


# ---------------------------------------------------------------------------
# C number formatting / parsing
# ---------------------------------------------------------------------------

def format_g(x) -> str:
    """Format ``x`` exactly like glibc ``printf("%g", (double) x)``.

    Python's ``%g`` agrees with C for finite numbers and infinities (both use
    correctly rounded conversion, 6 significant digits, trailing zeros
    removed, at least two exponent digits).  The one difference is NaN: glibc
    prints ``-nan`` when the sign bit is set, Python always ``nan``.
    """
    v = float(x)
    if v != v:
        return "-nan" if math.copysign(1.0, v) < 0 else "nan"
    return "%g" % v


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------

class SMVHeader(dict):
    """``dict`` of header keys to (stripped) value strings, last occurrence
    wins.  ``.text`` holds the raw header text (up to the first NUL byte, as
    the C string functions see it) and ``.size`` the header length in bytes."""

    text: str = ""
    size: int = 0


_ENTRY_RE = re.compile(r"([A-Za-z0-9_]+)[ \t]*=[ \t]*([^;\n\r]*)")


def _parse_entries(text: str) -> SMVHeader:
    hdr = SMVHeader()
    body = text
    if body.startswith("{"):
        body = body[1:]
    end = body.find("}")
    if end >= 0:
        body = body[:end]
    for m in _ENTRY_RE.finditer(body):
        key, value = m.group(1), m.group(2).strip()
        if key in hdr:
            del hdr[key]  # keep insertion order == order of the last occurrences
        hdr[key] = value
    return hdr


def _value_of(text: str, keyword: str) -> float:
    """nanoBragg's ``ValueOf``: last occurrence of ``keyword`` (as a
    substring), then the number after the following ``=``."""
    pos = text.rfind(keyword)
    if pos < 0 or not keyword:
        return math.nan
    eq = text.find("=", pos + len(keyword))
    if eq < 0:
        return 0.0  # C returns 0.0 here
    return c_atof(text[eq + 1:])


def header_value(header: Mapping[str, str], key: str, exact: bool = False) -> float:
    """Numeric value of ``key`` in an SMV header; NaN if absent or not a number.

    Default: nanoBragg's ``ValueOf`` rules (substring match, last occurrence,
    see the module docstring).  With ``exact=True`` only the key itself is
    looked up.  One deliberate deviation from C: a value with no numeric
    prefix gives NaN here, 0.0 in C.
    """
    if exact:
        value = header.get(key)
        if value is None:
            return math.nan
        return c_atof(str(value))
    text = getattr(header, "text", None)
    if not text:
        text = "".join(f"{k}={v};\n" for k, v in header.items())
    return _value_of(text, key)


def _err(path: str, what: str) -> InputFileError:
    return InputFileError(f"{path}: {what}")


def read_smv(path, c_like=False) -> Tuple[SMVHeader, np.ndarray]:
    """Read an SMV/ADSC image.  c_like: the -c_parity reader, which refuses a
    BYTE_ORDER value after a blank (``BYTE_ORDER= little_endian``, as fabio
    writes it): nanoBragg.c compares the bytes after the '=' with its own byte
    order and swaps every pixel when they differ; the default reader skips the
    blanks.

    Returns ``(header, data)`` with ``data`` a ``uint16`` array of shape
    ``(SIZE2, SIZE1)`` (slow, fast) in native byte order.  Raises
    :class:`InputFileError` (message starts with the file name) for files that
    cannot be opened, are not SMV, use an unsupported pixel type, or are
    shorter than header + pixels.  Bytes after the last pixel are ignored,
    as the C program does.
    """
    name, raw = read_bytes(path)
    if not raw.startswith(b"{"):
        raise _err(name, "not an SMV/ADSC file (header does not start with '{')"
                   + misfed_hint(raw, name, "smv"))
    first = raw[:SMV_HEADER_BYTES].split(b"\0", 1)[0].decode("latin-1")
    if "HEADER_BYTES" not in first:
        raise _err(name, "not an SMV/ADSC file (no HEADER_BYTES in the first 512 bytes)"
                   + misfed_hint(raw, name, "smv"))
    hb = _value_of(first, "HEADER_BYTES")
    if not (math.isfinite(hb) and hb >= 1 and hb == int(hb)):
        raise _err(name, f"bad HEADER_BYTES value in SMV header ({format_g(hb)})")
    header_size = int(hb)
    if len(raw) < header_size:
        raise _err(
            name,
            f"truncated SMV header: HEADER_BYTES={header_size} but the file has {len(raw)} bytes",
        )
    text = raw[:header_size].split(b"\0", 1)[0].decode("latin-1")
    if "}" not in text and b"}" in raw[header_size:header_size + 512]:
        warnings.warn(
            f"{name}: SMV header text runs past HEADER_BYTES={header_size} (as nanoBragg "
            "writes when its header overflows); pixels are read from byte "
            f"{header_size} like nanoBragg does, so they are probably shifted",
            NBWarning,
            stacklevel=2,
        )
    header = _parse_entries(text)
    header.text = text
    header.size = header_size

    # byte order: last BYTE_ORDER= in the text (the C reader does the same)
    bo_pos = text.rfind("BYTE_ORDER=")
    if bo_pos < 0:
        raise _err(name, "SMV header has no BYTE_ORDER")
    bo = text[bo_pos + len("BYTE_ORDER="):]
    if bo[:1] in (" ", "\t"):
        if c_like:
            raise _err(name, "SMV BYTE_ORDER '%s' after a blank: nanoBragg.c would swap the bytes "
                             "of every pixel; the default mode (without -c_parity) reads it"
                       % bo.split(";")[0].strip()[:40])
        bo = bo.lstrip(" \t")
    if bo.startswith("little_endian"):
        dtype = np.dtype("<u2")
    elif bo.startswith("big_endian"):
        dtype = np.dtype(">u2")
    else:
        raise _err(name, f"unknown SMV BYTE_ORDER '{bo.split(';')[0].strip()[:40]}'")

    ptype = header.get("TYPE")
    if ptype is not None and ptype != "unsigned_short":
        raise _err(name, f"unsupported SMV pixel TYPE '{ptype}' (only unsigned_short)")

    def _dim(key):
        v = header_value(header, key)
        if math.isfinite(v) and v >= 1 and v == int(v):
            return int(v)
        return None

    width, height = _dim("SIZE1"), _dim("SIZE2")
    if width is None or height is None:
        dd = _dim("DETECTOR_DIMENSIONS")
        if dd is None:
            raise _err(name, "SMV header lacks valid SIZE1/SIZE2")
        width = width or dd
        height = height or dd

    need = 2 * width * height
    have = len(raw) - header_size
    if have < need:
        raise _err(
            name,
            f"truncated SMV data: {width}x{height} unsigned_short pixels need {need} bytes "
            f"after the {header_size}-byte header, found {have}",
        )
    data = np.frombuffer(raw, dtype=dtype, count=width * height, offset=header_size)
    data = data.astype(np.uint16).reshape(height, width)
    return header, data


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------

#: a key as read_smv reads one (its entry pattern)
_KEY_RE = re.compile(r"[A-Za-z0-9_]+\Z")
#: characters a value may not hold: ';', CR and LF end an entry, '}' the header
#: and NUL its text (read_smv stops there), and dxtbx splits each line at '='
#: (two of them raise there); control characters are refused too
_VALUE_BAD = re.compile(r"[;=}\x00-\x08\x0a-\x1f\x7f-\x9f]")


def _field_items(fields: Fields) -> list:
    """The (key, value text) pairs of ``fields``, each checked so that the header
    holds it as one entry that reads back the same: a key of letters, digits
    and '_', a value without ';', '=', '}' or control characters, both latin-1;
    IOArgumentError naming the key otherwise."""
    if isinstance(fields, Mapping):
        items = list(fields.items())
    elif isinstance(fields, (str, bytes)) or not hasattr(fields, "__iter__"):
        raise IOArgumentError("SMV fields must be a mapping or a sequence of (key, value) "
                              f"pairs, not {type(fields).__name__}")
    else:
        items = []
        for item in fields:
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise IOArgumentError(f"SMV fields: each entry must be a (key, value) pair, "
                                      f"got {item!r:.60}")
            items.append(tuple(item))
    out = []
    for key, value in items:
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise IOArgumentError(f"SMV header key {key!r:.60} must be letters, digits and '_'")
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise IOArgumentError(f"SMV header value of {key} must be a str or a number, "
                                  f"not {type(value).__name__}")
        bad = _VALUE_BAD.search(value)
        if bad is not None:
            raise IOArgumentError(f"SMV header value of {key} holds {bad.group()!r}, which "
                                  "would break the header (';', '=', '}' and control "
                                  "characters are refused)")
        try:
            value.encode("latin-1")
        except UnicodeEncodeError as exc:
            raise IOArgumentError(f"SMV header value of {key} holds "
                                  f"{value[exc.start:exc.end]!r}, which is not latin-1 "
                                  "text") from None
        out.append((key, value))
    return out


def _header_bytes_value(items) -> int:
    """The last HEADER_BYTES value, as a whole number of bytes (512 when absent)."""
    given = [v for k, v in items if k == "HEADER_BYTES"]
    if not given:
        return SMV_HEADER_BYTES
    text = given[-1].strip()
    if not (text.isdigit() and text.isascii() and int(text) >= 1):
        raise IOArgumentError(f"SMV header value of HEADER_BYTES must be a whole number of "
                              f"bytes >= 1, got {given[-1]!r:.40}")
    return int(text)


def _raw_header(items) -> bytes:
    parts = ["{\n"]
    for key, value in items:
        end = "\n" if key in NO_SEMICOLON_KEYS else ";\n"
        parts.append(f"{key}={value}{end}")
    parts.append("}\f")
    return "".join(parts).encode("latin-1")


def smv_header_text(fields: Fields, header_overflow: str = "c") -> bytes:
    """The SMV header nanoBragg writes, for the given ordered ``(key, value)``
    fields (values already formatted as strings).

    ``{\\n`` + one ``KEY=VALUE;\\n`` line per field (``DIALS_ORIGIN`` without
    ``;``) + ``}\\f``, padded with spaces to 512 bytes.

    nanoBragg bug: the 512-byte budget leaves only about 127 characters for
    the 23 numbers, so realistic geometries (e.g. a 2463x2527 Pilatus at
    231 mm) overflow it.  C then writes the whole text unpadded and the pixel
    data start after it, although the header still says ``HEADER_BYTES=512``
    (readers, fabio included, then fail or see shifted pixels).
    ``header_overflow`` chooses what to do in that case:

    * ``"c"`` (default): the same bytes as C, with a ``RuntimeWarning``;
    * ``"grow"``: a valid file: ``HEADER_BYTES`` becomes the next multiple
      of 512 that holds the text, and the header is padded to it;
    * ``"error"``: raise :class:`IOArgumentError` (a ValueError).

    The header is padded to the ``HEADER_BYTES`` value of ``fields`` (512 when
    absent).  A key or value that would not read back as one entry (see
    ``_field_items``: ';', '=', '}', control or non-latin-1 characters) raises
    :class:`IOArgumentError` naming the key.
    """
    # (str first: `in` compared an array elementwise, a ValueError)
    if not isinstance(header_overflow, str) or header_overflow not in ("c", "grow", "error"):
        raise IOArgumentError(f"header_overflow must be 'c', 'grow' or 'error', not "
                              f"{header_overflow!r}")
    items = _field_items(fields)
    text = _raw_header(items)
    size = _header_bytes_value(items)
    if len(text) > size:
        if header_overflow == "error":
            raise IOArgumentError(
                f"SMV header text is {len(text)} bytes, longer than HEADER_BYTES={size}"
            )
        if header_overflow == "c":
            warnings.warn(
                f"SMV header text is {len(text)} bytes, longer than HEADER_BYTES={size}; "
                "written unpadded, as nanoBragg does (the file is not valid SMV)",
                NBWarning,
                stacklevel=2,
            )
            return text
        while len(text) > size:
            size = (size // SMV_HEADER_BYTES + 1) * SMV_HEADER_BYTES
            items = [(k, str(size) if k == "HEADER_BYTES" else v) for k, v in items]
            text = _raw_header(items)
    return text + b" " * (size - len(text))


def nanobragg_smv_fields(
    fpixels: int,
    spixels: int,
    pixel_size_m: float,
    distance_m: float,
    lambda_m: float,
    Xbeam_m: float,
    Ybeam_m: float,
    Fbeam_m: float,
    Sbeam_m: float,
    detsize_s_m: float,
    dials_origin_mm: Sequence[float],
    ORGX: float,
    ORGY: float,
    close_distance_m: float,
    phi0_rad: float,
    osc_rad: float,
    twotheta_rad: float,
    denzo_sign: int = -1,
    byte_order: str = "little_endian",
) -> list:
    """Ordered SMV header fields with nanoBragg's arithmetic and ``%g`` text.

    Inputs in the C program's internal units (metres, radians).
    ``denzo_sign`` selects the DENZO beam expression: ``-1`` gives
    ``(Sbeam-0.0*pixel)`` as for ``-intfile``, ``+1`` gives
    ``(Sbeam+0.0*pixel)`` as for ``-noisefile`` (they differ only for -0.0).
    """
    f = format_g
    pix = float(pixel_size_m)
    S = float(Sbeam_m)
    F = float(Fbeam_m)
    if denzo_sign < 0:
        dx, dy = (S - 0.0 * pix) * 1000.0, (F - 0.0 * pix) * 1000.0
    else:
        dx, dy = (S + 0.0 * pix) * 1000.0, (F + 0.0 * pix) * 1000.0
    o = [float(v) for v in dials_origin_mm]
    if len(o) != 3:
        raise IOArgumentError("dials_origin_mm needs 3 values")
    phi_deg = float(phi0_rad) * RTD
    return [
        ("HEADER_BYTES", "512"),
        ("DIM", "2"),
        ("BYTE_ORDER", byte_order),
        ("TYPE", "unsigned_short"),
        ("SIZE1", "%d" % int(fpixels)),
        ("SIZE2", "%d" % int(spixels)),
        ("PIXEL_SIZE", f(pix * 1000.0)),
        ("DISTANCE", f(float(distance_m) * 1000.0)),
        ("WAVELENGTH", f(float(lambda_m) * 1e10)),
        ("BEAM_CENTER_X", f(float(Xbeam_m) * 1000.0)),
        ("BEAM_CENTER_Y", f(float(Ybeam_m) * 1000.0)),
        ("ADXV_CENTER_X", f(F * 1000.0)),
        ("ADXV_CENTER_Y", f((float(detsize_s_m) - S) * 1000.0)),
        ("MOSFLM_CENTER_X", f((S - 0.5 * pix) * 1000.0)),
        ("MOSFLM_CENTER_Y", f((F - 0.5 * pix) * 1000.0)),
        ("DENZO_X_BEAM", f(dx)),
        ("DENZO_Y_BEAM", f(dy)),
        ("DIALS_ORIGIN", ",".join(f(v) for v in o)),
        ("XDS_ORGX", f(ORGX)),
        ("XDS_ORGY", f(ORGY)),
        ("CLOSE_DISTANCE", f(float(close_distance_m) * 1000.0)),
        ("PHI", f(phi_deg)),
        ("OSC_START", f(phi_deg)),
        ("OSC_RANGE", f(float(osc_rad) * RTD)),
        ("TWOTHETA", f(float(twotheta_rad) * RTD)),
        ("DETECTOR_SN", "000"),
        ("BEAMLINE", "fake"),
    ]


#: 2000-01-01T00:00:00 UTC, the nominal start of every simulated collection
#: (files must not depend on the wall clock, so two runs give the same bytes)
NOMINAL_EPOCH_UNIX = 946684800.0

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def smv_date(seconds_after_epoch: float = 0.0) -> str:
    """ADSC ``DATE`` text (``Sat Jan 01 00:00:00 2000``) for the nominal epoch plus
    ``seconds_after_epoch`` (s), UTC, in English whatever the locale: dxtbx parses
    it with ``"%a %b %d %H:%M:%S %Y"``."""
    import time as _time
    t = _time.gmtime(NOMINAL_EPOCH_UNIX + max(float(seconds_after_epoch), 0.0))
    return "%s %s %02d %02d:%02d:%02d %04d" % (
        _DAYS[t.tm_wday], _MONTHS[t.tm_mon - 1], t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, t.tm_year)


def _pedestal_text(adc_offset: float) -> str:
    # dxtbx's JHSim reader does int(ADC_OFFSET): write whole numbers without a point
    v = float(adc_offset)
    return "%d" % int(v) if math.isfinite(v) and v == int(v) else format_g(v)


def reader_smv_fields(adc_offset: float, exposure_s: float, seconds_after_epoch: float = 0.0) -> list:
    """Header keys nanoBragg.c does not write but image readers look for.

    Appended after nanoBragg's own keys in default mode (``-c_parity`` leaves
    them out, so its files stay byte-identical to C's):

    * ``ADC_OFFSET`` -- the pedestal added to every pixel (counts).  dxtbx's
      FormatSMVJHSim (chosen for ``BEAMLINE=fake``) assumes 1 without it and
      derives the trusted range and pedestal from it.
    * ``IMAGE_PEDESTAL`` -- the same number under the key dxtbx's FormatSMVADSC reads.
    * ``TIME`` -- exposure (s), required by FormatSMVADSC's scan model.
    * ``DATE`` -- :func:`smv_date`, the nominal collection time (no wall clock).

    XDS (and generate_XDS.INP) find what they need in nanoBragg's own keys:
    SIZE1/SIZE2, PIXEL_SIZE, DISTANCE, WAVELENGTH, BEAM_CENTER_X/Y,
    OSC_START/OSC_RANGE, TWOTHETA, XDS_ORGX/XDS_ORGY.
    """
    ped = _pedestal_text(adc_offset)
    return [
        ("ADC_OFFSET", ped),
        ("IMAGE_PEDESTAL", ped),
        ("TIME", format_g(float(exposure_s))),
        ("DATE", smv_date(seconds_after_epoch)),
    ]


def write_smv(
    path, image_uint16: np.ndarray, fields: Fields, header_overflow: str = "c"
) -> None:
    """Write ``image_uint16`` (shape ``(S, F)``) as an SMV file, atomically.

    ``header_overflow`` is passed to :func:`smv_header_text` (what to do when
    the header text does not fit in 512 bytes; default: exactly like C).

    ``fields`` are the ordered header entries (see :func:`nanobragg_smv_fields`);
    the data are written little-endian (any uint16 array is accepted, whatever
    its byte order), so ``BYTE_ORDER`` must say ``little_endian``, and
    ``SIZE1``/``SIZE2`` must match the array.  Entries :func:`read_smv` needs
    and ``fields`` lacks are added after ``HEADER_BYTES`` (or first):
    ``HEADER_BYTES``, ``BYTE_ORDER``, ``SIZE1``, ``SIZE2``; the writer knows
    their only correct values, and every file it writes reads back.  The
    header is read back with :func:`read_smv`'s rules before anything is
    written.  Errors are :class:`IOArgumentError` naming the argument or key.
    """
    name = path_name(path)
    img = as_image(image_uint16, "SMV image")
    if img.ndim != 2:
        raise IOArgumentError(f"SMV image must be 2-D (S, F), got shape {img.shape}")
    if img.dtype.kind != "u" or img.dtype.itemsize != 2:
        raise IOArgumentError(f"SMV image must be uint16, got {img.dtype}")
    if img.size == 0:
        raise IOArgumentError(f"SMV image has no pixels (shape {img.shape})")
    items = _field_items(fields)
    s, fpx = img.shape
    d = dict(items)
    if d.get("BYTE_ORDER", "little_endian").strip() != "little_endian":
        raise IOArgumentError("write_smv writes little_endian data; BYTE_ORDER must say so, "
                              f"not {d['BYTE_ORDER']!r:.40}")
    for key, n in (("SIZE1", fpx), ("SIZE2", s)):
        if key in d and d[key].strip() != str(n):
            raise IOArgumentError(f"{key}={d[key]} does not match image shape {img.shape}")
    missing = [(k, v) for k, v in (("BYTE_ORDER", "little_endian"), ("SIZE1", str(fpx)),
                                   ("SIZE2", str(s))) if k not in d]
    if "HEADER_BYTES" not in d:
        items = [("HEADER_BYTES", str(SMV_HEADER_BYTES))] + missing + items
    elif missing:
        at = next(i for i, (k, _) in enumerate(items) if k == "HEADER_BYTES") + 1
        items = items[:at] + missing + items[at:]
    header = smv_header_text(items, header_overflow)
    _check_reads_back(header, fpx, s, header_overflow == "c"
                      and len(header) > _header_bytes_value(items))
    data = np.ascontiguousarray(img, dtype="<u2")
    with atomic_open(name, "wb") as fh:
        # header, then the array's own buffer (no joined bytes copy of the image)
        fh.write(header)
        fh.write(memoryview(data).cast("B"))


def _check_reads_back(header: bytes, fpixels: int, spixels: int, c_overflow: bool) -> None:
    """The header as read_smv (and nanoBragg's ValueOf) reads it must say what the
    pixels are: a value holding a key's name ('...SIZE1...') moves ValueOf's
    match.  ``c_overflow``: the C's overflowing header (warned about), whose
    HEADER_BYTES is short of the text by design."""
    text = header.decode("latin-1")
    first = text[:SMV_HEADER_BYTES]
    if "HEADER_BYTES" not in first:
        raise IOArgumentError("SMV fields: HEADER_BYTES must come within the header's first "
                              f"{SMV_HEADER_BYTES} bytes")
    hb = _value_of(first, "HEADER_BYTES")
    if not c_overflow and hb != len(header):
        raise IOArgumentError(f"SMV fields: HEADER_BYTES reads back as {format_g(hb)}, not the "
                              f"header's {len(header)} bytes (a value holding 'HEADER_BYTES'?)")
    if math.isfinite(hb) and hb >= 1:
        text = text[:int(hb)]       # what read_smv reads as the header
    bo = text[text.rfind("BYTE_ORDER=") + len("BYTE_ORDER="):]
    if "BYTE_ORDER=" not in text or not bo.startswith("little_endian"):
        raise IOArgumentError(f"SMV fields: BYTE_ORDER reads back as {bo.split(';')[0]!r:.40}, "
                              "not 'little_endian' (read_smv takes the text right after the "
                              "last 'BYTE_ORDER=')")
    entries = _parse_entries(text)
    if entries.get("TYPE", "unsigned_short") != "unsigned_short":
        raise IOArgumentError(f"SMV fields: TYPE must be unsigned_short, not {entries['TYPE']!r:.40}")
    for key, n in (("SIZE1", fpixels), ("SIZE2", spixels)):
        v = _value_of(text, key)
        if v != n:
            raise IOArgumentError(f"SMV fields: {key} reads back as {format_g(v)}, not {n} "
                                  f"(read_smv takes the number after the last '{key}' in the "
                                  "header text: does a later value hold it?)")


# ---------------------------------------------------------------------------
# series frames (nbnumba-series --format smv)
# ---------------------------------------------------------------------------

def write_frame(path, res, image, noise: bool, header_overflow: str = "grow",
                seconds_after_epoch: float = 0.0) -> None:
    """Write ``image`` (uint16 (S, F)) with the header nanoBragg would give ``res``;
    ``seconds_after_epoch`` (s) dates the frame (DATE key, default mode only).

    The header is nanoBragg's (``nbnumba.outputs.smv_fields``), so PHI/OSC_START
    and OSC_RANGE carry the frame's own rotation start and width.  The noise
    image is stored when noise is on (nanoBragg's ``-noisefile`` header), else the
    scaled integer image (``-intfile`` header).
    """
    from ..outputs import smv_fields   # outputs imports this module
    write_smv(path, image, smv_fields(res, noise=noise, seconds_after_epoch=seconds_after_epoch),
              header_overflow=header_overflow)


def read_frame(path):
    """(header dict, uint16 (S, F) pixels)."""
    return read_smv(path)
