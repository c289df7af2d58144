// gdn_chunk_dwy.comp: chunked gated delta rule, backward steps 4–5 (docs/kernels.md §3.3) for one chunk c of one
// (b, h) per workgroup. With Kb = K ⊙ βe^γ, Vb = V ⊙ β, du = dv2 and dw from gdn_chunk_dqk.comp:
//   direct terms (row owner r): dk_r += β_r e^{γ_r}(Aᵀdw)_r; dv_r = β_r (Aᵀdu)_r;
//     dβ_r = e^{γ_r} k_r·(Aᵀdw)_r + v_r·(Aᵀdu)_r; dγ_r += β_r e^{γ_r} k_r·(Aᵀdw)_r;
//   dA = dw·Kbᵀ + du·Vbᵀ (only its strictly lower part is needed: A is unit lower triangular);
//   dL = −strict_lower(Aᵀ·dA·Aᵀ) (column pass Aᵀ·dA, then row pass ·Aᵀ, in one shared tile);
//   G_rj = dL_rj β_r e^{γ_r−γ_j}: dk_r += Σ_j G_rj k_j + Σ_i G_ir k_i; dβ_r += Σ_j dL_rj (k_r·k_j) e^{γ_r−γ_j};
//     dγ += rowsum(dL ⊙ L) − colsum(dL ⊙ L) (dL_rj L_rj = G_rj (k_r·k_j));
//   dg = reverse local cumsum of dγ. A is read from cw (written by gdn_chunk_wy.comp).
#version 450
#include "gdn_chunk_common.glsl"

layout(binding = 0) readonly buffer K { float k[]; };         // (B, T, H, DK) k or k̂
layout(binding = 1) readonly buffer Vb { float v[]; };        // (B, T, H, DV)
layout(binding = 2) readonly buffer Beta { float beta[]; };   // (B, T, H)
layout(binding = 3) readonly buffer CW { float cw[]; };       // reads γ, A
layout(binding = 4) readonly buffer BW { float bw[]; };       // reads dv2, dw, dγ (stage 3)
layout(binding = 5) buffer GR { float gr[]; };                // dk̂ at offDk (+=); writes dv, dg, dβ

shared float sX[BT * BT];   // dA → Aᵀ·dA → G (row-major)
shared float sG[BT];        // γ
shared float sB[BT];        // β (0 on padded rows)
shared float sDg[BT];       // dγ
shared float sDb[BT];       // dβ

float dotK(uint ra, uint rb) {
    float d = 0.0;
    for (uint x0 = 0; x0 < DK; x0 += UN) [[unroll]] for (uint xc = 0; xc < UN; xc++) {
        uint x = x0 + xc;
        if (x < DK) d += k[ra * DK + x] * k[rb * DK + x];
    }
    return d;
}

void main() {
    uint item = groupIndex();
    if (item >= args.B * args.H * args.NT) return;
    uint bh = item / args.NT, c = item % args.NT, b = bh / args.H, h = bh % args.H;
    uint t0 = c * BT, n = min(BT, args.T - t0), lid = gl_LocalInvocationID.x;

    for (uint r = lid; r < BT; r += WG) {
        bool ok = r < n;
        uint row = ok ? rowOf(b, t0 + r, h) : 0u;
        sG[r] = ok ? cw[args.offGam + row] : 0.0;
        sB[r] = ok ? beta[row] : 0.0;
    }
    barrier();

    // direct terms, row owner r
    uint r = lid;
    if (r < n) {
        uint row = rowOf(b, t0 + r, h);
        float er = exp(sG[r]), br = sB[r], x = 0.0, y = 0.0;
        for (uint i = 0; i < DK; i++) {
            float at = 0.0;
            for (uint m0 = r; m0 < n; m0 += UN) [[unroll]] for (uint mc = 0; mc < UN; mc++) {
                uint m = m0 + mc;
                if (m < n) at += cw[args.offA + aIndex(bh, c, m, r)] * bw[args.offDw + rowOf(b, t0 + m, h) * DK + i];
            }
            gr[args.offDk + row * DK + i] += br * er * at;
            x += k[row * DK + i] * at;
        }
        for (uint j = 0; j < DV; j++) {
            float at = 0.0;
            for (uint m0 = r; m0 < n; m0 += UN) [[unroll]] for (uint mc = 0; mc < UN; mc++) {
                uint m = m0 + mc;
                if (m < n) at += cw[args.offA + aIndex(bh, c, m, r)] * bw[args.offDv2 + rowOf(b, t0 + m, h) * DV + j];
            }
            gr[args.offDv + row * DV + j] = br * at;
            y += v[row * DV + j] * at;
        }
        sDb[r] = er * x + y;
        sDg[r] = bw[args.offDgam + row] + br * er * x;
    }

    // dA_rj = β_j (e^{γ_j} dw_r·k_j + dv2_r·v_j) for j < r < n
    for (uint e = lid; e < BT * BT; e += WG) {
        uint ar = e / BT, j = e % BT;
        float val = 0.0;
        if (ar < n && j < ar) {
            uint rr = rowOf(b, t0 + ar, h), rj = rowOf(b, t0 + j, h);
            float s1 = 0.0, s2 = 0.0;
            for (uint x0 = 0; x0 < DK; x0 += UN) [[unroll]] for (uint xc = 0; xc < UN; xc++) {
                uint x = x0 + xc;
                if (x < DK) s1 += bw[args.offDw + rr * DK + x] * k[rj * DK + x];
            }
            for (uint x0 = 0; x0 < DV; x0 += UN) [[unroll]] for (uint xc = 0; xc < UN; xc++) {
                uint x = x0 + xc;
                if (x < DV) s2 += bw[args.offDv2 + rr * DV + x] * v[rj * DV + x];
            }
            val = sB[j] * (exp(sG[j]) * s1 + s2);
        }
        sX[e] = val;
    }
    barrier();

    // column pass: (Aᵀ·dA)[:, j], owner j reads and writes only column j
    float tmp[BT];
    uint j = lid;
    if (j < BT) {
        for (uint rr = 0; rr < BT; rr++) {
            float s = 0.0;
            if (rr < n)
                for (uint m0 = rr; m0 < n; m0 += UN) [[unroll]] for (uint mc = 0; mc < UN; mc++) {
                    uint m = m0 + mc;
                    if (m < n) s += cw[args.offA + aIndex(bh, c, m, rr)] * sX[m * BT + j];
                }
            tmp[rr] = s;
        }
        for (uint rr = 0; rr < BT; rr++) sX[rr * BT + j] = tmp[rr];
    }
    barrier();

    // row pass: dL_rj = −Σ_{m≤j} (AᵀdA)_rm A_jm for j < r; then G_rj in place, owner r reads and writes row r
    if (r < BT) {
        for (uint jj = 0; jj < BT; jj++) {
            float s = 0.0;
            if (r < n && jj < r)
                for (uint m0 = 0; m0 <= jj; m0 += UN) [[unroll]] for (uint mc = 0; mc < UN; mc++) {
                    uint m = m0 + mc;
                    if (m <= jj) s -= sX[r * BT + m] * cw[args.offA + aIndex(bh, c, jj, m)];
                }
            tmp[jj] = s;
        }
        float db = 0.0, rowLL = 0.0;
        if (r < n) {
            uint row = rowOf(b, t0 + r, h);
            for (uint jj = 0; jj < r; jj++) {
                float e = exp(sG[r] - sG[jj]);   // j < r: ≤ 0
                float dlk = tmp[jj] * dotK(row, rowOf(b, t0 + jj, h)) * e;
                db += dlk;
                rowLL += sB[r] * dlk;
                tmp[jj] *= sB[r] * e;            // G_rj
            }
        }
        for (uint jj = 0; jj < BT; jj++) sX[r * BT + jj] = (r < n && jj < r) ? tmp[jj] : 0.0;
        if (r < n) { sDb[r] += db; sDg[r] += rowLL; }
    }
    barrier();

    // G terms of dk and the column sums of dL ⊙ L, owner r
    if (r < n) {
        uint row = rowOf(b, t0 + r, h);
        float colLL = 0.0;
        for (uint m = r + 1; m < n; m++) colLL += sX[m * BT + r] * dotK(rowOf(b, t0 + m, h), row);
        sDg[r] -= colLL;
        for (uint i = 0; i < DK; i++) {
            float s = 0.0;
            for (uint m0 = 0; m0 < n; m0 += UN) [[unroll]] for (uint mc = 0; mc < UN; mc++) {
                uint m = m0 + mc;
                if (m < n) {
                    float km = k[rowOf(b, t0 + m, h) * DK + i];
                    if (m < r) s += sX[r * BT + m] * km;
                    if (m > r) s += sX[m * BT + r] * km;
                }
            }
            gr[args.offDk + row * DK + i] += s;
        }
        gr[args.offDb + row] = sDb[r];
    }
    barrier();

    // dg = reverse local cumsum of dγ (one invocation, fixed order)
    if (lid == 0) {
        float acc = 0.0;
        for (uint rr = 0; rr < n; rr++) {
            uint x = n - 1 - rr;
            acc += sDg[x];
            gr[args.offDg + rowOf(b, t0 + x, h)] = acc;
        }
    }
}
