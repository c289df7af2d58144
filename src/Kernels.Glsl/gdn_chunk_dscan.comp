// gdn_chunk_dscan.comp: chunked gated delta rule, backward step 2 (docs/kernels.md §3.3): the reverse state scan,
// one invocation per value column j of dh (DK floats in registers), workgroups over (b, h, column block).
// dh = dht or 0; for c = NT−1..0: store dh_c[:, j] = dh[:, j] (gradient w.r.t. the state at the end of chunk c);
// dv2_rj = dv_loc_rj + e^{γ_last−γ_r}(k_r·dh[:, j]) (in place in bw);
// dh[:, j] ← e^{γ_last} dh[:, j] + Σ_r (scale·e^{γ_r} dO_rj q_r − dv2_rj w_r). After chunk 0, dh = dh0.
#version 450
#include "gdn_chunk_common.glsl"

layout(binding = 0) readonly buffer Q { float q[]; };       // (B, T, H, DK) q or q̂
layout(binding = 1) readonly buffer K { float k[]; };       // (B, T, H, DK) k or k̂
layout(binding = 2) readonly buffer CW { float cw[]; };     // reads γ, w
layout(binding = 3) readonly buffer DO { float dO[]; };     // (B, T, H, DV)
layout(binding = 4) buffer BW { float bw[]; };              // dv_loc → dv2 in place
layout(binding = 5) readonly buffer Dht { float dht[]; };   // (B, H, DK, DV) when GC_FINAL
layout(binding = 6) writeonly buffer Dh0 { float dh0[]; };  // (B, H, DK, DV) when GC_DH0
layout(binding = 7) writeonly buffer DHC { float dhc[]; };  // (B, H, NT, DK, DV) dh_c

void main() {
    uint blocks = (DV + WG - 1) / WG;
    uint item = groupIndex();
    if (item >= args.B * args.H * blocks) return;
    uint bh = item / blocks, j = (item % blocks) * WG + gl_LocalInvocationID.x;
    if (j >= DV) return;
    uint b = bh / args.H, h = bh % args.H;

    float D[DK];
    for (uint i0 = 0; i0 < DK; i0 += UN) [[unroll]] for (uint ic = 0; ic < UN; ic++) {
        uint i = i0 + ic;
        if (i < DK) D[i] = (args.flags & GC_FINAL) != 0u ? dht[stateIndex(bh, i, j)] : 0.0;
    }
    float dv2[BT];
    for (uint cc = 0; cc < args.NT; cc++) {
        uint c = args.NT - 1 - cc, t0 = c * BT, n = min(BT, args.T - t0);
        for (uint i0 = 0; i0 < DK; i0 += UN) [[unroll]] for (uint ic = 0; ic < UN; ic++) {
            uint i = i0 + ic;
            if (i < DK) dhc[hIndex(bh, c, i, j)] = D[i];
        }
        float gl = cw[args.offGam + rowOf(b, t0 + n - 1, h)];
        for (uint r = 0; r < n; r++) {
            uint row = rowOf(b, t0 + r, h);
            float s = 0.0;
            for (uint i0 = 0; i0 < DK; i0 += UN) [[unroll]] for (uint ic = 0; ic < UN; ic++) {
                uint i = i0 + ic;
                if (i < DK) s += k[row * DK + i] * D[i];
            }
            float d = bw[args.offDv2 + row * DV + j] + exp(gl - cw[args.offGam + row]) * s;   // r valid: ≤ 0
            bw[args.offDv2 + row * DV + j] = d;
            dv2[r] = d;
        }
        float decay = exp(gl);
        for (uint i0 = 0; i0 < DK; i0 += UN) [[unroll]] for (uint ic = 0; ic < UN; ic++) {
            uint i = i0 + ic;
            if (i < DK) D[i] *= decay;
        }
        for (uint r = 0; r < n; r++) {
            uint row = rowOf(b, t0 + r, h);
            float a = args.scale * exp(cw[args.offGam + row]) * dO[row * DV + j], m = dv2[r];
            for (uint i0 = 0; i0 < DK; i0 += UN) [[unroll]] for (uint ic = 0; ic < UN; ic++) {
                uint i = i0 + ic;
                if (i < DK) D[i] += a * q[row * DK + i] - m * cw[args.offW + row * DK + i];
            }
        }
    }
    if ((args.flags & GC_DH0) != 0u)
        for (uint i0 = 0; i0 < DK; i0 += UN) [[unroll]] for (uint ic = 0; ic < UN; ic++) {
            uint i = i0 + ic;
            if (i < DK) dh0[stateIndex(bh, i, j)] = D[i];
        }
}
