"""The precision section of `make bench`: what it runs on which CPU, and how it sizes its sets."""

from __future__ import annotations

from benchmarks.precision import (
    MIN_DIFFERENCE_S,
    cpu_flags,
    native_precisions,
    set_sizes,
)

CPUINFO = """processor\t: 0
flags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni avx512_bf16
model name\t: AMD EPYC
"""


def test_the_cpu_flags_that_decide_the_precisions_are_read():
    assert cpu_flags(CPUINFO) == ["avx2", "avx512f", "avx512_vnni", "avx512_bf16"]
    assert cpu_flags("") == []


def test_a_cpu_without_bfloat16_skips_it_and_says_why():
    runs, skipped = native_precisions(["WINOGRAD", "FP32", "INT8", "BIN"])
    assert runs == ["float32", "int8"]
    assert skipped == {"bfloat16": "OpenVINO reports no BF16 on this CPU"}
    assert native_precisions(["BF16", "FP32", "INT8"]) == (["float32", "int8", "bfloat16"], {})


def test_the_sets_grow_with_the_cpu_so_their_difference_stays_measurable():
    for images_per_s in (5.0, 40.0, 900.0):
        small, large = set_sizes(images_per_s, 32)
        assert small % 32 == 0 and large % 32 == 0
        assert (large - small) / images_per_s >= MIN_DIFFERENCE_S
    assert set_sizes(900.0, 32)[1] > 10 * set_sizes(40.0, 32)[1]
