"""gguf.quants.dequantize, which plinth.models.gguf.read_gguf relies on, checked block by block against a
loop-per-element transcription of ggml's reference C (ggml-quants.c, dequantize_row_*), in float32 arithmetic."""

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

from plinth.models.gguf import READ_TYPES

f32 = np.float32


def _half(block: np.ndarray, at: int) -> np.float32:
    return f32(block[at : at + 2].view(np.float16)[0])


def _ref_q8_0(b):
    d = _half(b, 0)
    return [f32(q) * d for q in b[2:34].view(np.int8)]


def _ref_q4_0(b):
    d, qs = _half(b, 0), b[2:18]
    return [f32(int(q & 0xF) - 8) * d for q in qs] + [f32(int(q >> 4) - 8) * d for q in qs]


def _ref_q4_1(b):
    d, m, qs = _half(b, 0), _half(b, 2), b[4:20]
    return [f32(int(q & 0xF)) * d + m for q in qs] + [f32(int(q >> 4)) * d + m for q in qs]


def _ref_q5(b, with_min: bool):
    d = _half(b, 0)
    m = _half(b, 2) if with_min else f32(0)
    start = 4 if with_min else 2
    qh = int(b[start : start + 4].view(np.uint32)[0])
    qs = b[start + 4 : start + 20]
    offset = 0 if with_min else 16
    lo = [((int(qs[j]) & 0xF) | (((qh >> j) << 4) & 0x10)) - offset for j in range(16)]
    hi = [((int(qs[j]) >> 4) | ((qh >> (j + 12)) & 0x10)) - offset for j in range(16)]
    if with_min:
        return [f32(x) * d + m for x in lo + hi]
    return [f32(x) * d for x in lo + hi]


def _scale_min_k4(j: int, q: np.ndarray) -> tuple[int, int]:
    if j < 4:
        return int(q[j]) & 63, int(q[j + 4]) & 63
    return (int(q[j + 4]) & 0xF) | ((int(q[j - 4]) >> 6) << 4), (int(q[j + 4]) >> 4) | ((int(q[j]) >> 6) << 4)


def _ref_q4_k(b):
    d, dmin, scales, qs = _half(b, 0), _half(b, 2), b[4:16], b[16:144]
    out = []
    for j in range(4):  # 64 values per step: low nibbles with one scale, high nibbles with the next
        (sc1, m1), (sc2, m2) = _scale_min_k4(2 * j, scales), _scale_min_k4(2 * j + 1, scales)
        d1, mm1, d2, mm2 = d * f32(sc1), dmin * f32(m1), d * f32(sc2), dmin * f32(m2)
        q = qs[32 * j : 32 * j + 32]
        out += [d1 * f32(int(x) & 0xF) - mm1 for x in q] + [d2 * f32(int(x) >> 4) - mm2 for x in q]
    return out


def _ref_q5_k(b):
    d, dmin, scales, qh, ql = _half(b, 0), _half(b, 2), b[4:16], b[16:48], b[48:176]
    out = []
    for j in range(4):
        (sc1, m1), (sc2, m2) = _scale_min_k4(2 * j, scales), _scale_min_k4(2 * j + 1, scales)
        d1, mm1, d2, mm2 = d * f32(sc1), dmin * f32(m1), d * f32(sc2), dmin * f32(m2)
        u1, u2 = 1 << (2 * j), 2 << (2 * j)
        q = ql[32 * j : 32 * j + 32]
        out += [d1 * f32((int(q[k]) & 0xF) + (16 if qh[k] & u1 else 0)) - mm1 for k in range(32)]
        out += [d2 * f32((int(q[k]) >> 4) + (16 if qh[k] & u2 else 0)) - mm2 for k in range(32)]
    return out


def _ref_q6_k(b):
    ql, qh, sc, d = b[0:128], b[128:192], b[192:208].view(np.int8), _half(b, 208)
    y = [f32(0)] * 256
    for n in range(2):  # two halves of 128 values
        lo, hi, s, base = ql[64 * n :], qh[32 * n :], sc[8 * n :], 128 * n
        for k in range(32):
            i = k // 16
            q1 = ((int(lo[k]) & 0xF) | (((int(hi[k]) >> 0) & 3) << 4)) - 32
            q2 = ((int(lo[k + 32]) & 0xF) | (((int(hi[k]) >> 2) & 3) << 4)) - 32
            q3 = ((int(lo[k]) >> 4) | (((int(hi[k]) >> 4) & 3) << 4)) - 32
            q4 = ((int(lo[k + 32]) >> 4) | (((int(hi[k]) >> 6) & 3) << 4)) - 32
            for quarter, (q, si) in enumerate(((q1, i), (q2, i + 2), (q3, i + 4), (q4, i + 6))):
                y[base + k + 32 * quarter] = d * f32(s[si]) * f32(q)
    return y


def _ref_bf16(b):
    return [np.array([int(b[0]) << 16 | int(b[1]) << 24], dtype=np.uint32).view(np.float32)[0]]


def _ref_f16(b):
    return [f32(b.view(np.float16)[0])]


REFERENCES = {
    Q.Q8_0: _ref_q8_0,
    Q.Q4_0: _ref_q4_0,
    Q.Q4_1: _ref_q4_1,
    Q.Q5_0: lambda b: _ref_q5(b, False),
    Q.Q5_1: lambda b: _ref_q5(b, True),
    Q.Q4_K: _ref_q4_k,
    Q.Q5_K: _ref_q5_k,
    Q.Q6_K: _ref_q6_k,
    Q.BF16: _ref_bf16,
    Q.F16: _ref_f16,
}
# where each block type keeps its fp16 scale(s), so random bytes there can be replaced by sane values
SCALE_OFFSETS = {
    Q.Q8_0: (0,),
    Q.Q4_0: (0,),
    Q.Q5_0: (0,),
    Q.Q4_1: (0, 2),
    Q.Q5_1: (0, 2),
    Q.Q4_K: (0, 2),
    Q.Q5_K: (0, 2),
    Q.Q6_K: (208,),
}


def _random_blocks(qtype: Q, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    _, size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (n_blocks, size), dtype=np.uint8)
    if qtype in (Q.F16, Q.BF16):  # keep the values finite: random exponents can be inf/nan
        values = rng.normal(0, 3, n_blocks).astype(np.float32)
        raw = (
            values.astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
            if qtype == Q.F16
            else (values.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(n_blocks, 2)
        )
    for at in SCALE_OFFSETS.get(qtype, ()):
        signs = rng.choice([-1.0, 1.0], n_blocks)
        raw[:, at : at + 2] = (
            (signs * rng.uniform(1e-3, 2.0, n_blocks)).astype(np.float16).view(np.uint8).reshape(-1, 2)
        )
    return raw


@pytest.mark.parametrize("qtype", sorted(REFERENCES, key=lambda q: q.name), ids=lambda q: q.name)
def test_dequantize_matches_ggml_reference(qtype):
    rng = np.random.default_rng(int(qtype))
    blocks = _random_blocks(qtype, 24, rng)
    ours = dequantize(blocks.reshape(4, -1), qtype)  # 4 rows of 6 blocks, as a tensor would be laid out
    expected = np.array([v for block in blocks for v in REFERENCES[qtype](block)], dtype=np.float32)
    assert ours.dtype == np.float32
    assert np.array_equal(ours.reshape(-1), expected)


def test_every_read_type_is_verified():
    assert set(READ_TYPES) - {"F32"} == {q.name for q in REFERENCES}
