"""benchmarks.hotspots: the parsing and attribution behind its profile (on
fixed text), and the real round trip from a numba function's object code,
through objdump, to the address it runs at."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from benchmarks import hotspots as H

SYMS = """
lib0.o:     file format elf64-x86-64

SYMBOL TABLE:
0000000000000000 l    df *ABS*	0000000000000000 <string>
0000000000000000 g     F .ltext	0000000000000100 _ZN7nbnumba7kernels3cpu9_lean_sumB3v71B96c8tJTIeFIjx
0000000000000100 g     F .ltext	0000000000000040 cfunc._ZN7nbnumba7physics5sincgB4v147B36c8
0000000000000140 l     F .ltext	0000000000000000 empty
0000000000000000 g     F .text	0000000000000010 NRT_incref
"""

DIS = """
Disassembly of section .text:

0000000000000000 <NRT_incref>:
   0:	lock addq $0x1,(%rdi)

Disassembly of section .ltext:

0000000000000000 <_ZN7nbnumba7kernels3cpu9_lean_sumB3v71B96c8tJTIeFIjx>:
   0:	push   %r14
   4:	vmulpd %ymm1,%ymm2,%ymm3
   8:	vdivsd %xmm1,%xmm2,%xmm3
 100:	vfmadd213pd %zmm1,%zmm2,%zmm3
"""


def test_parse_symbols_and_disassembly():
    syms = H.parse_symbols(SYMS)
    assert [(s[1], s[2], s[3]) for s in syms] == [(0, 0x100, ".ltext"), (0x100, 0x40, ".ltext"),
                                                 (0, 0x10, ".text")]
    dis = H.parse_disassembly(DIS)
    assert dis[0] == (".text", 0, "lock addq $0x1,(%rdi)")
    assert dis[1:] == [(".ltext", 0, "push   %r14"), (".ltext", 4, "vmulpd %ymm1,%ymm2,%ymm3"),
                       (".ltext", 8, "vdivsd %xmm1,%xmm2,%xmm3"),
                       (".ltext", 0x100, "vfmadd213pd %zmm1,%zmm2,%zmm3")]


def test_short_names_and_kinds():
    assert H.short_name("_ZN7nbnumba7kernels3cpu9_lean_sumB3v71B96c8tJT") == \
        "nbnumba.kernels.cpu._lean_sum"
    assert H.short_name("cfunc._ZN7nbnumba7physics5sincgB4v147") == "cfunc:nbnumba.physics.sincg"
    assert H.short_name("NRT_incref") == "NRT_incref"
    assert H.kind("vmulpd %ymm1,%ymm2,%ymm3") == "vector"
    assert H.kind("vgatherdpd (%rax,%zmm1,8),%zmm2{%k1}") == "vector"
    assert H.kind("vdivsd %xmm1,%xmm2,%xmm3") == "scalar-fp"
    assert H.kind("add $0x4,%r8") == "other"


def test_samples_in_window():
    text = "  100.5: 7f00\n 101.0:  7f10\n102.7: 7f20\nbad line\n 101.2: zz\n"
    assert H.samples_in_window(text, 100.9, 102.0) == [0x7f10]
    assert H.samples_in_window(text, 0, 1e9) == [0x7f00, 0x7f10, 0x7f20]


def test_attribute_and_summarise():
    funcs = [("a", 1000, 0x40), ("b", 2000, 0x800)]
    ips = [1000, 1004, 1004, 2000, 2000 + 0x500, 2000 + 0x500, 2000 + 0x500, 5000]
    per_fn, per_off, outside = H.attribute(ips, funcs)
    assert per_fn == {"a": 3, "b": 4} and outside == 1
    assert per_off["b"] == {0: 1, 0x500: 3}
    insns = {"a": [(0, "push %r14"), (4, "vmulpd %ymm1,%ymm2,%ymm3")],
             "b": [(0, "vdivsd %xmm1,%xmm2,%xmm3"), (0x500, "vgatherdpd (%rax),%ymm2{%k1}")]}
    rows = H.summarise(per_fn, per_off, insns, region=512, top=2)
    assert [r["function"] for r in rows] == ["b", "a"]
    b, a = rows
    assert b["share"] == pytest.approx(4 / 7) and a["share"] == pytest.approx(3 / 7)
    assert b["split"] == pytest.approx({"scalar-fp": 0.25, "vector": 0.75})
    assert a["split"] == pytest.approx({"other": 1 / 3, "vector": 2 / 3})
    hot = b["regions"][0]
    assert hot["offset"] == 0x400 and hot["share"] == pytest.approx(3 / 7)
    assert hot["gathers"] == 1 and hot["vector"] == 1
    assert b["listing"] == [(0x500, pytest.approx(3 / 7), "vgatherdpd (%rax),%ymm2{%k1}")]


@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs binutils' objdump")
def test_object_code_round_trip(tmp_path):
    """A function compiled while recording: its symbol, found in its object by
    objdump, maps onto the address numba runs it at, and its code is the
    loop's (vector instructions from the element-wise multiply)."""
    from numba import njit

    with H.record_libraries() as libs:
        @njit(cache=False)
        def scale(x, out):
            for i in range(x.shape[0]):
                out[i] = 3.0 * x[i]
        x = np.arange(64.0)
        out = np.empty_like(x)
        scale(x, out)
    assert np.array_equal(out, 3.0 * x)
    objs = H.library_objects(libs, str(tmp_path))
    functions, insns = H.load_functions(objs)
    cres = next(iter(scale.overloads.values()))
    ptr = cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name)
    hits = [f for f in functions if f[1] <= ptr < f[1] + f[2] and ".scale" in f[0]]
    assert hits, [f[0] for f in functions]
    label = hits[0][0]
    assert hits[0][1] == ptr                     # the symbol starts where numba runs it
    assert any(H.kind(t) == "vector" for _, t in insns[label])
    per_fn, _, outside = H.attribute([ptr, ptr + 1], functions)
    assert per_fn[label] == 2 and outside == 0
