// gdn_chunk_l2.comp: in-kernel L2 norm of q and k for the chunked gated delta rule (docs/kernels.md §3.4):
// ŷ = x·rstd, rstd = (Σx² + 1e-6)^−½, written to scratch copies q̂, k̂. One invocation per row (b, t, h):
// rows [0, B·T·H) are q, rows [B·T·H, 2·B·T·H) are k. The backward is gdn_l2_back.comp.
#version 450
#include "gdn_chunk_common.glsl"

layout(binding = 0) readonly buffer Q { float q[]; };      // (B, T, H, DK)
layout(binding = 1) readonly buffer K { float k[]; };      // (B, T, H, DK)
layout(binding = 2) writeonly buffer QN { float qn[]; };   // (B, T, H, DK) q̂
layout(binding = 3) writeonly buffer KN { float kn[]; };   // (B, T, H, DK) k̂

void main() {
    uint rows = args.B * args.T * args.H;
    uint row = groupIndex() * WG + gl_LocalInvocationID.x;
    if (row >= 2 * rows) return;
    bool isK = row >= rows;
    uint o = (isK ? row - rows : row) * DK;
    float s = 0.0;
    for (uint i0 = 0; i0 < DK; i0 += UN) [[unroll]] for (uint ic = 0; ic < UN; ic++) {
        uint i = i0 + ic;
        if (i < DK) { float x = isK ? k[o + i] : q[o + i]; s += x * x; }
    }
    float r = inversesqrt(s + 1e-6);
    for (uint i0 = 0; i0 < DK; i0 += UN) [[unroll]] for (uint ic = 0; ic < UN; ic++) {
        uint i = i0 + ic;
        if (i < DK) { if (isK) kn[o + i] = r * k[o + i]; else qn[o + i] = r * q[o + i]; }
    }
}
