// gdn_chunk_dvloc.comp: chunked gated delta rule, backward step 1 (docs/kernels.md §3.3) for one chunk c of one
// (b, h) per workgroup: dv_loc_r = Σ_{r≤i<n} scale·e^{γ_i−γ_r}(q_i·k_r)·dO_i, written to the dv2 region of
// bw (gdn_chunk_dscan.comp then adds the inter-chunk term). The tile P_ir (BT, BT) is masked before exp.
#version 450
#include "gdn_chunk_common.glsl"

layout(binding = 0) readonly buffer Q { float q[]; };      // (B, T, H, DK) q or q̂
layout(binding = 1) readonly buffer K { float k[]; };      // (B, T, H, DK) k or k̂
layout(binding = 2) readonly buffer CW { float cw[]; };    // reads γ
layout(binding = 3) readonly buffer DO { float dO[]; };    // (B, T, H, DV)
layout(binding = 4) writeonly buffer BW { float bw[]; };   // writes dv2 (= dv_loc)

shared float sP[BT * BT];   // scale·(q_i·k_r) e^{γ_i−γ_r} at i·BT + r for r ≤ i < n, else 0
shared float sG[BT];

void main() {
    uint item = groupIndex();
    if (item >= args.B * args.H * args.NT) return;
    uint bh = item / args.NT, c = item % args.NT, b = bh / args.H, h = bh % args.H;
    uint t0 = c * BT, n = min(BT, args.T - t0), lid = gl_LocalInvocationID.x;

    for (uint r = lid; r < BT; r += WG) sG[r] = r < n ? cw[args.offGam + rowOf(b, t0 + r, h)] : 0.0;
    barrier();
    for (uint e = lid; e < BT * BT; e += WG) {
        uint i = e / BT, r = e % BT;
        float val = 0.0;
        if (i < n && r <= i) {
            uint qi = rowOf(b, t0 + i, h) * DK, kr = rowOf(b, t0 + r, h) * DK;
            float d = 0.0;
            for (uint x0 = 0; x0 < DK; x0 += UN) [[unroll]] for (uint xc = 0; xc < UN; xc++) {
                uint x = x0 + xc;
                if (x < DK) d += q[qi + x] * k[kr + x];
            }
            val = args.scale * d * exp(sG[i] - sG[r]);
        }
        sP[e] = val;
    }
    barrier();
    for (uint e = lid; e < n * DV; e += WG) {
        uint r = e / DV, j = e % DV;
        float s = 0.0;
        for (uint i0 = r; i0 < n; i0 += UN) [[unroll]] for (uint ic = 0; ic < UN; ic++) {
            uint i = i0 + ic;
            if (i < n) s += sP[i * BT + r] * dO[rowOf(b, t0 + i, h) * DV + j];
        }
        bw[args.offDv2 + rowOf(b, t0 + r, h) * DV + j] = s;
    }
}
