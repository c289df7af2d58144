// gdn_l2_back.comp: backward of the in-kernel L2 norm of q and k (docs/kernels.md §3.4):
// y = x·rstd, rstd = (Σx² + 1e-6)^−½, dx = rstd·(dy − (dy·y)·y). One invocation per row (b, t, h) of q and
// of k: rows [0, B·T·H) are q, rows [B·T·H, 2·B·T·H) are k. dy (w.r.t. the normalised vectors) comes from
// the gradient buffer of gdn_recurrent_back.comp.
#version 450
#include "gdn_common.glsl"

layout(binding = 0) readonly buffer Q { float q[]; };         // (B, T, H, DK)
layout(binding = 1) readonly buffer K { float k[]; };         // (B, T, H, DK)
layout(binding = 2) readonly buffer Grads { float gr[]; };    // dq̂ (B, T, H, DK) at 0, dk̂ at offDk
layout(binding = 3) writeonly buffer DQ { float dq[]; };      // (B, T, H, DK)
layout(binding = 4) writeonly buffer DKb { float dk[]; };     // (B, T, H, DK)

void main() {
    uint rows = args.B * args.T * args.H;
    uint row = groupIndex() * WG + gl_LocalInvocationID.x;
    if (row >= 2 * rows) return;
    bool isK = row >= rows;
    uint o = (isK ? row - rows : row) * DK, go = isK ? args.offDk + o : o;
    float sx = 0.0, dot = 0.0;
    for (uint i0 = 0; i0 < DK; i0 += KCHUNK) [[unroll]] for (uint ic = 0; ic < KCHUNK; ic++) {
        uint i = i0 + ic;
        if (i < DK) { float x = isK ? k[o + i] : q[o + i]; sx += x * x; dot += gr[go + i] * x; }
    }
    float r = inversesqrt(sx + 1e-6);
    dot *= r;                                     // dy·y
    for (uint i0 = 0; i0 < DK; i0 += KCHUNK) [[unroll]] for (uint ic = 0; ic < KCHUNK; ic++) {
        uint i = i0 + ic;
        if (i < DK) {
            float y = r * (isK ? k[o + i] : q[o + i]);
            float dx = r * (gr[go + i] - dot * y);
            if (isK) dk[o + i] = dx; else dq[o + i] = dx;
        }
    }
}
