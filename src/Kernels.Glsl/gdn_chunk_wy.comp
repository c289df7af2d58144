// gdn_chunk_wy.comp: chunked gated delta rule, forward steps 1–4 (docs/kernels.md §3.2) for one chunk c of one
// (b, h) per workgroup: γ_r = Σ_{i≤r} g_i (local cumsum, fp32); L_rj = β_r (k_r·k_j) e^{γ_r−γ_j} for j < r < n;
// A = (I + L)⁻¹ by forward substitution, one invocation per column of A, in one of two forms chosen by the
// specialization constant ROW_SWEEP per device class (the host's KernelTuning): a sweep over the rows of
// the shared tile with two barriers per row (GPUs: no per-invocation array, which a GPU would spill), or a
// per-column solve in registers with no barrier (CPU-type drivers, where barriers are slow);
// w = A·(K ⊙ βe^γ) (BT, DK), u = A·(V ⊙ β) (BT, DV). Writes γ, A, w, u into cw (gdn_chunk_common.glsl).
// Padded rows r ≥ n: L is 0 there, so A is the identity on them; they are never stored as w or u.
#version 450
#include "gdn_chunk_common.glsl"

layout(binding = 0) readonly buffer K { float k[]; };         // (B, T, H, DK) k or k̂
layout(binding = 1) readonly buffer Vb { float v[]; };        // (B, T, H, DV)
layout(binding = 2) readonly buffer G { float g[]; };         // (B, T, H) log decay ≤ 0
layout(binding = 3) readonly buffer Beta { float beta[]; };   // (B, T, H)
layout(binding = 4) buffer CW { float cw[]; };                // forward work: γ, A, w, u written

layout(constant_id = 4) const bool ROW_SWEEP = false;

shared float sA[BT * BT];   // L, then A (row-major, r·BT + j)
shared float sG[BT];        // γ
shared float sB[BT];        // β (0 on padded rows)
shared float sE[BT];        // β e^γ

void main() {
    uint item = groupIndex();
    if (item >= args.B * args.H * args.NT) return;   // uniform per workgroup: before any barrier
    uint bh = item / args.NT, c = item % args.NT, b = bh / args.H, h = bh % args.H;
    uint t0 = c * BT, n = min(BT, args.T - t0), lid = gl_LocalInvocationID.x;

    // 1. local cumsum (one invocation, fixed order)
    if (lid == 0) {
        float acc = 0.0;
        for (uint r0 = 0; r0 < BT; r0 += UN) [[unroll]] for (uint rc = 0; rc < UN; rc++) {
            uint r = r0 + rc;
            if (r < BT) {
                float bt = 0.0;
                if (r < n) {
                    uint row = rowOf(b, t0 + r, h);
                    acc += g[row];
                    bt = beta[row];
                    cw[args.offGam + row] = acc;
                }
                sG[r] = acc;
                sB[r] = bt;
                sE[r] = r < n ? bt * exp(acc) : 0.0;   // γ ≤ 0
            }
        }
    }
    barrier();

    // 2. L (strictly lower, zero on padded rows and columns; the exponent is masked before exp)
    for (uint e = lid; e < BT * BT; e += WG) {
        uint r = e / BT, j = e % BT;
        float val = 0.0;
        if (r < n && j < r) {
            uint kr = rowOf(b, t0 + r, h) * DK, kj = rowOf(b, t0 + j, h) * DK;
            float d = 0.0;
            for (uint i0 = 0; i0 < DK; i0 += UN) [[unroll]] for (uint ic = 0; ic < UN; ic++) {
                uint i = i0 + ic;
                if (i < DK) d += k[kr + i] * k[kj + i];
            }
            val = sB[r] * d * exp(sG[r] - sG[j]);
        }
        sA[e] = val;
    }
    barrier();

    uint j = lid;
    if (ROW_SWEEP) {
        // 3 (GPU). Rows of A in order, in place over L: A_rj = δ_rj − Σ_{j≤m<r} L_rm A_mj, invocation j owning
        // column j; rows m < r already hold A, row r still holds L until every column has read it.
        for (uint r = 0; r < BT; r++) {
            float s = r == j ? 1.0 : 0.0;
            if (j < r)
                for (uint m0 = j; m0 < r; m0 += UN) [[unroll]] for (uint mc = 0; mc < UN; mc++) {
                    uint m = m0 + mc;
                    if (m < r) s -= sA[r * BT + m] * sA[m * BT + j];
                }
            barrier();
            if (j < BT) sA[r * BT + j] = s;
            barrier();
        }
    } else {
        // 3 (CPU driver). Column j of A solves (I + L)·x = e_j: x_r = δ_rj − Σ_{j≤m<r} L_rm x_m (x_m = 0 for
        // m < j), x in registers: no barrier inside the solve (barriers are costly on lavapipe).
        float x[BT];
        if (j < BT) {
            for (uint r = 0; r < BT; r++) {
                float s = r == j ? 1.0 : 0.0;
                if (r > j) {
                    for (uint m0 = j; m0 < r; m0 += UN) [[unroll]] for (uint mc = 0; mc < UN; mc++) {
                        uint m = m0 + mc;
                        if (m < r) s -= sA[r * BT + m] * x[m];
                    }
                }
                x[r] = r < j ? 0.0 : s;
            }
        }
        barrier();   // every column has read L
        if (j < BT) for (uint r = 0; r < BT; r++) sA[r * BT + j] = x[r];
        barrier();
    }
    for (uint e = lid; e < BT * BT; e += WG) cw[args.offA + aIndex(bh, c, e / BT, e % BT)] = sA[e];

    // 4. w = A·(K ⊙ βe^γ), u = A·(V ⊙ β): row r sums over m ≤ r (A is unit lower triangular)
    for (uint e = lid; e < n * DK; e += WG) {
        uint r = e / DK, i = e % DK;
        float s = 0.0;
        for (uint m0 = 0; m0 <= r; m0 += UN) [[unroll]] for (uint mc = 0; mc < UN; mc++) {
            uint m = m0 + mc;
            if (m <= r) s += sA[r * BT + m] * sE[m] * k[rowOf(b, t0 + m, h) * DK + i];
        }
        cw[args.offW + rowOf(b, t0 + r, h) * DK + i] = s;
    }
    for (uint e = lid; e < n * DV; e += WG) {
        uint r = e / DV, i = e % DV;
        float s = 0.0;
        for (uint m0 = 0; m0 <= r; m0 += UN) [[unroll]] for (uint mc = 0; mc < UN; mc++) {
            uint m = m0 + mc;
            if (m <= r) s += sA[r * BT + m] * sB[m] * v[rowOf(b, t0 + m, h) * DV + i];
        }
        cw[args.offVn + rowOf(b, t0 + r, h) * DV + i] = s;
    }
}
