// gdn_chunk_scan.comp: chunked gated delta rule, forward step 5 (docs/kernels.md §3.2): the inter-chunk scan,
// sequential over chunks, one invocation per value column j of the state (DK floats in registers),
// workgroups over (b, h, block of WG columns: the host narrows blocks on GPUs for more workgroups). Per chunk c: store h_c[:, j]; v_new_rj = u_rj − w_r·h_c[:, j] (in
// place of u in cw); h[:, j] ← e^{γ_last} h[:, j] + Σ_r k_r·(v_new_rj e^{γ_last−γ_r}). With GC_FINAL the last
// state is ht. No barriers, so invocations past DV leave at once.
#version 450
#include "gdn_chunk_common.glsl"

layout(binding = 0) readonly buffer K { float k[]; };      // (B, T, H, DK) k or k̂
layout(binding = 1) buffer CW { float cw[]; };             // reads γ, w, u; writes v_new, h_c
layout(binding = 2) readonly buffer H0 { float h0[]; };    // (B, H, DK, DV) when GC_H0
layout(binding = 3) writeonly buffer Ht { float ht[]; };   // (B, H, DK, DV) when GC_FINAL
layout(binding = 4) writeonly buffer HC { float hc[]; };   // (B, H, NT, DK, DV) h_c

void main() {
    uint blocks = (DV + WG - 1) / WG;
    uint item = groupIndex();
    if (item >= args.B * args.H * blocks) return;
    uint bh = item / blocks, j = (item % blocks) * WG + gl_LocalInvocationID.x;
    if (j >= DV) return;
    uint b = bh / args.H, h = bh % args.H;

    float S[DK];
    for (uint i0 = 0; i0 < DK; i0 += UN) [[unroll]] for (uint ic = 0; ic < UN; ic++) {
        uint i = i0 + ic;
        if (i < DK) S[i] = (args.flags & GC_H0) != 0u ? h0[stateIndex(bh, i, j)] : 0.0;
    }
    float vn[BT];   // v_new_rj e^{γ_last−γ_r} of the current chunk
    for (uint c = 0; c < args.NT; c++) {
        uint t0 = c * BT, n = min(BT, args.T - t0);
        for (uint i0 = 0; i0 < DK; i0 += UN) [[unroll]] for (uint ic = 0; ic < UN; ic++) {
            uint i = i0 + ic;
            if (i < DK) hc[hIndex(bh, c, i, j)] = S[i];
        }
        float gl = cw[args.offGam + rowOf(b, t0 + n - 1, h)];
        for (uint r = 0; r < n; r++) {
            uint row = rowOf(b, t0 + r, h);
            float s = 0.0;
            for (uint i0 = 0; i0 < DK; i0 += UN) [[unroll]] for (uint ic = 0; ic < UN; ic++) {
                uint i = i0 + ic;
                if (i < DK) s += cw[args.offW + row * DK + i] * S[i];
            }
            float u = cw[args.offVn + row * DV + j] - s;
            cw[args.offVn + row * DV + j] = u;
            vn[r] = u * exp(gl - cw[args.offGam + row]);   // r valid: γ_last − γ_r ≤ 0
        }
        float decay = exp(gl);
        for (uint i0 = 0; i0 < DK; i0 += UN) [[unroll]] for (uint ic = 0; ic < UN; ic++) {
            uint i = i0 + ic;
            if (i < DK) S[i] *= decay;
        }
        for (uint r = 0; r < n; r++) {
            uint kr = rowOf(b, t0 + r, h) * DK;
            float a = vn[r];
            for (uint i0 = 0; i0 < DK; i0 += UN) [[unroll]] for (uint ic = 0; ic < UN; ic++) {
                uint i = i0 + ic;
                if (i < DK) S[i] += k[kr + i] * a;
            }
        }
    }
    if ((args.flags & GC_FINAL) != 0u)
        for (uint i0 = 0; i0 < DK; i0 += UN) [[unroll]] for (uint ic = 0; ic < UN; ic++) {
            uint i = i0 + ic;
            if (i < DK) ht[stateIndex(bh, i, j)] = S[i];
        }
}
