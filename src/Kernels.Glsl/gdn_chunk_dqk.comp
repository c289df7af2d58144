// gdn_chunk_dqk.comp: chunked gated delta rule, backward step 3 (docs/kernels.md §3.3) for one chunk c of one
// (b, h) per workgroup, one invocation per row r < n (it owns every reduction of its row, in a fixed order):
//   dS_rj = scale·(dO_r·v_new_j) e^{γ_r−γ_j} (j ≤ r, shared tile);
//   dq_r = scale·e^{γ_r} (h_c·dO_r) + Σ_{j≤r} dS_rj k_j;
//   dk_r = e^{γ_last−γ_r} (dh_c·v_new_r) [= dk_inter] + Σ_{r≤i<n} dS_ir q_i;   dw_r = −h_c·dv2_r;
//   dγ_r = q_r·dq_r − k_r·dk_r, and the last valid row also gets e^{γ_last} Σ(h_c ⊙ dh_c) + Σ_r k_r·dk_inter_r.
// dq, dk (w.r.t. q̂, k̂) go to the gradient buffer; dw and dγ to bw for gdn_chunk_dwy.comp.
#version 450
#include "gdn_chunk_common.glsl"

layout(binding = 0) readonly buffer Q { float q[]; };       // (B, T, H, DK) q or q̂
layout(binding = 1) readonly buffer K { float k[]; };       // (B, T, H, DK) k or k̂
layout(binding = 2) readonly buffer CW { float cw[]; };     // reads γ, v_new
layout(binding = 3) readonly buffer DO { float dO[]; };     // (B, T, H, DV)
layout(binding = 4) buffer BW { float bw[]; };              // reads dv2; writes dw, dγ
layout(binding = 5) writeonly buffer GR { float gr[]; };    // writes dq̂ (B, T, H, DK) at 0, dk̂ at offDk
layout(binding = 6) readonly buffer HC { float hc[]; };     // (B, H, NT, DK, DV) h_c
layout(binding = 7) readonly buffer DHC { float dhc[]; };   // (B, H, NT, DK, DV) dh_c

shared float sS[BT * BT];   // dS (row-major), 0 outside j ≤ r < n
shared float sG[BT];
shared float sRed[WG];      // k_r·dk_inter_r per row
shared float sHd[WG];       // partial sums of h_c ⊙ dh_c

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
            uint dr = rowOf(b, t0 + r, h) * DV, vj = rowOf(b, t0 + j, h) * DV;
            float d = 0.0;
            for (uint x0 = 0; x0 < DV; x0 += UN) [[unroll]] for (uint xc = 0; xc < UN; xc++) {
                uint x = x0 + xc;
                if (x < DV) d += dO[dr + x] * cw[args.offVn + vj + x];
            }
            val = args.scale * d * exp(sG[r] - sG[j]);
        }
        sS[e] = val;
    }
    uint hb = hIndex(bh, c, 0, 0);
    float hd = 0.0;
    for (uint e = lid; e < DK * DV; e += WG) hd += hc[hb + e] * dhc[hb + e];
    sHd[lid] = hd;
    barrier();

    uint r = lid;
    float gl = sG[n - 1], kint = 0.0, dgam = 0.0;
    if (r < n) {
        uint row = rowOf(b, t0 + r, h);
        float eq = args.scale * exp(sG[r]), ek = exp(gl - sG[r]);
        float qdq = 0.0, kdk = 0.0;
        for (uint i = 0; i < DK; i++) {
            float s1 = 0.0, s2 = 0.0, s3 = 0.0;
            for (uint x0 = 0; x0 < DV; x0 += UN) [[unroll]] for (uint xc = 0; xc < UN; xc++) {
                uint x = x0 + xc;
                if (x < DV) {
                    float hv = hc[hb + i * DV + x];
                    s1 += dO[row * DV + x] * hv;
                    s2 += cw[args.offVn + row * DV + x] * dhc[hb + i * DV + x];
                    s3 += bw[args.offDv2 + row * DV + x] * hv;
                }
            }
            float dq = eq * s1, dki = ek * s2, dk = dki;
            for (uint m0 = 0; m0 < n; m0 += UN) [[unroll]] for (uint mc = 0; mc < UN; mc++) {
                uint m = m0 + mc;
                if (m < n) {
                    uint mr = rowOf(b, t0 + m, h) * DK + i;
                    if (m <= r) dq += sS[r * BT + m] * k[mr];
                    if (m >= r) dk += sS[m * BT + r] * q[mr];
                }
            }
            float qi = q[row * DK + i], ki = k[row * DK + i];
            qdq += qi * dq;
            kdk += ki * dk;
            kint += ki * dki;
            gr[row * DK + i] = dq;
            gr[args.offDk + row * DK + i] = dk;
            bw[args.offDw + row * DK + i] = -s3;
        }
        dgam = qdq - kdk;
    }
    sRed[lid] = kint;
    barrier();
    if (r < n) {
        if (r == n - 1) {
            float a = 0.0, hh = 0.0;
            for (uint x0 = 0; x0 < WG; x0 += UN) [[unroll]] for (uint xc = 0; xc < UN; xc++) {
                uint x = x0 + xc;
                if (x < WG) { a += sRed[x]; hh += sHd[x]; }
            }
            dgam += a + exp(gl) * hh;
        }
        bw[args.offDgam + rowOf(b, t0 + r, h)] = dgam;
    }
}
