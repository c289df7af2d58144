// gdn_chunk_out.comp: chunked gated delta rule, forward step 6 (docs/kernels.md §3.2) for one chunk c of one
// (b, h) per workgroup: o_r = scale·[e^{γ_r} q_r·h_c + Σ_{j≤r} (q_r·k_j) e^{γ_r−γ_j} v_new_j]. The masked
// decayed Q Kᵀ tile P (BT, BT) lives in shared memory; padded rows and columns are 0 (masked before exp).
#version 450
#include "gdn_chunk_common.glsl"

layout(binding = 0) readonly buffer Q { float q[]; };      // (B, T, H, DK) q or q̂
layout(binding = 1) readonly buffer K { float k[]; };      // (B, T, H, DK) k or k̂
layout(binding = 2) readonly buffer CW { float cw[]; };    // reads γ, v_new
layout(binding = 3) writeonly buffer O { float o[]; };     // (B, T, H, DV)
layout(binding = 4) readonly buffer HC { float hc[]; };    // (B, H, NT, DK, DV) h_c

shared float sP[BT * BT];   // scale·(q_r·k_j) e^{γ_r−γ_j} for j ≤ r < n, else 0
shared float sG[BT];        // γ (padded rows: unused)

void main() {
    uint item = groupIndex();
    if (item >= args.B * args.H * args.NT) return;
    uint bh = item / args.NT, c = item % args.NT, b = bh / args.H, h = bh % args.H;
    uint t0 = c * BT, n = min(BT, args.T - t0), lid = gl_LocalInvocationID.x;

    for (uint r = lid; r < BT; r += WG) sG[r] = r < n ? cw[args.offGam + rowOf(b, t0 + r, h)] : 0.0;
    barrier();
    for (uint e = lid; e < BT * BT; e += WG) {
        uint r = e / BT, j = e % BT;
        float val = 0.0;
        if (r < n && j <= r) {
            uint qr = rowOf(b, t0 + r, h) * DK, kj = rowOf(b, t0 + j, h) * DK;
            float d = 0.0;
            for (uint i0 = 0; i0 < DK; i0 += UN) [[unroll]] for (uint ic = 0; ic < UN; ic++) {
                uint i = i0 + ic;
                if (i < DK) d += q[qr + i] * k[kj + i];
            }
            val = args.scale * d * exp(sG[r] - sG[j]);
        }
        sP[e] = val;
    }
    barrier();
    for (uint e = lid; e < n * DV; e += WG) {
        uint r = e / DV, j = e % DV, row = rowOf(b, t0 + r, h);
        float s = 0.0;
        for (uint i0 = 0; i0 < DK; i0 += UN) [[unroll]] for (uint ic = 0; ic < UN; ic++) {
            uint i = i0 + ic;
            if (i < DK) s += q[row * DK + i] * hc[hIndex(bh, c, i, j)];
        }
        float acc = args.scale * exp(sG[r]) * s;
        for (uint m0 = 0; m0 <= r; m0 += UN) [[unroll]] for (uint mc = 0; mc < UN; mc++) {
            uint m = m0 + mc;
            if (m <= r) acc += sP[r * BT + m] * cw[args.offVn + rowOf(b, t0 + m, h) * DV + j];
        }
        o[row * DV + j] = acc;
    }
}
