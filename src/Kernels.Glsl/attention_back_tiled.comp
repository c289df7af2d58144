// attention_back_tiled.comp: causal GQA softmax attention backward for GPUs (docs/kernels.md §2; the
// CPU-driver twin is attention_back.comp, whose PASS 0 computes δ for both). Same maths, shared-memory tiles:
//   PASS 1  one workgroup per (b, kv head hk, block of WG key rows), one invocation per key row j with k_j,
//           v_j, dK_j, dV_j in registers; tiles of BC query rows (q, dO, lse, δ) of each head of the group are
//           loaded into shared memory once per workgroup, from the block's first key to T (i ≥ j):
//           dV_j = Σ_h Σ_{i≥j} P_ij dO_i,  dK_j = scale·Σ_h Σ_{i≥j} dS_ij q_i;
//   PASS 2  one workgroup per (b, h, block of WG query rows), one invocation per query row i; tiles of BC
//           key rows (k, v) up to the block's last row: dQ_i = scale·Σ_{j≤i} dS_ij k_j;
// with P_ij = e^{scale·q_i·k_j − lse_i} (argument clamped to ≤ 0: lse_i ≥ every s_ij up to rounding) and
// dS_ij = P_ij(dO_i·v_j − δ_i). Each invocation owns its output row: sums run in a fixed order, no atomics.
#version 450
#extension GL_EXT_control_flow_attributes : require
layout(constant_id = 0) const uint D = 64;    // head size
layout(constant_id = 1) const uint WG = 64;   // rows per workgroup
layout(constant_id = 2) const uint PASS = 1;  // 1: dK, dV; 2: dQ
layout(constant_id = 3) const uint BC = 16;   // rows per shared tile
layout(local_size_x_id = 1) in;
#include "attention_common.glsl"

layout(binding = 0) readonly buffer Q { float q[]; };          // (B, T, H, D)
layout(binding = 1) readonly buffer K { float k[]; };          // (B, T, Hkv, D)
layout(binding = 2) readonly buffer Vb { float v[]; };         // (B, T, Hkv, D)
layout(binding = 3) readonly buffer Lse { float lse[]; };      // (B, H, T)
layout(binding = 4) readonly buffer DO { float dO[]; };        // (B, T, H, D)
layout(binding = 5) readonly buffer Delta { float delta[]; };  // (B, H, T) from attention_back.comp PASS 0
layout(binding = 6) writeonly buffer Out0 { float out0[]; };   // PASS 1: dk (B, T, Hkv, D); PASS 2: dq
layout(binding = 7) writeonly buffer Out1 { float out1[]; };   // PASS 1: dv (B, T, Hkv, D)

shared float sA[BC * D];    // PASS 1: q rows; PASS 2: k rows
shared float sB[BC * D];    // PASS 1: dO rows; PASS 2: v rows
shared float sL[BC];        // PASS 1: lse of the tile's rows
shared float sD[BC];        // PASS 1: δ of the tile's rows

void dkdv() {
    uint blocks = (args.T + WG - 1) / WG;
    uint item = groupIndex();                     // (b·Hkv + hk)·blocks + key block
    if (item >= args.B * args.Hkv * blocks) return;
    uint bk = item / blocks, j0b = (item % blocks) * WG, lid = gl_LocalInvocationID.x, j = j0b + lid;
    uint b = bk / args.Hkv, hk = bk % args.Hkv, g = args.H / args.Hkv;
    bool live = j < args.T;
    uint ko = kvIndex(b, live ? j : 0u, hk);
    float kr[D], vr[D], dk[D], dv[D];
    for (uint d0 = 0; d0 < D; d0 += DCHUNK) [[unroll]] for (uint dc = 0; dc < DCHUNK; dc++) { uint d = d0 + dc; if (d < D) { kr[d] = live ? k[ko + d] : 0.0; vr[d] = live ? v[ko + d] : 0.0; dk[d] = 0.0; dv[d] = 0.0; } }
    for (uint h = hk * g; h < hk * g + g; h++)
        for (uint i0 = j0b; i0 < args.T; i0 += BC) {   // query rows i ≥ the block's first key
            for (uint e = lid; e < BC * D; e += WG) {
                uint c = e / D, d = e % D, i = i0 + c;
                bool in_ = i < args.T;
                uint qo = qIndex(b, in_ ? i : 0u, h) + d;
                sA[e] = in_ ? q[qo] : 0.0;
                sB[e] = in_ ? dO[qo] : 0.0;
            }
            for (uint c = lid; c < BC; c += WG) {
                uint i = i0 + c, r = rowIndex(b, h, i < args.T ? i : 0u);
                sL[c] = i < args.T ? lse[r] : 0.0;
                sD[c] = i < args.T ? delta[r] : 0.0;
            }
            barrier();
            if (live) {
                uint cEnd = min(BC, args.T - i0);
                for (uint c = (j > i0 ? j - i0 : 0u); c < cEnd; c++) {   // i = i0 + c ≥ j
                    float s = 0.0, dp = 0.0;
                    for (uint d0 = 0; d0 < D; d0 += DCHUNK) [[unroll]] for (uint dc = 0; dc < DCHUNK; dc++) { uint d = d0 + dc; if (d < D) { s += sA[c * D + d] * kr[d]; dp += sB[c * D + d] * vr[d]; } }
                    float p = exp(min(args.scale * s - sL[c], 0.0));
                    float ds = p * (dp - sD[c]);
                    for (uint d0 = 0; d0 < D; d0 += DCHUNK) [[unroll]] for (uint dc = 0; dc < DCHUNK; dc++) { uint d = d0 + dc; if (d < D) { dv[d] += p * sB[c * D + d]; dk[d] += ds * sA[c * D + d]; } }
                }
            }
            barrier();
        }
    if (!live) return;
    for (uint d0 = 0; d0 < D; d0 += DCHUNK) [[unroll]] for (uint dc = 0; dc < DCHUNK; dc++) { uint d = d0 + dc; if (d < D) { out0[ko + d] = args.scale * dk[d]; out1[ko + d] = dv[d]; } }
}

void dq() {
    uint blocks = (args.T + WG - 1) / WG;
    uint item = groupIndex();                     // (b·H + h)·blocks + query block
    if (item >= args.B * args.H * blocks) return;
    uint bh = item / blocks, i0 = (item % blocks) * WG, lid = gl_LocalInvocationID.x, i = i0 + lid;
    uint b = bh / args.H, h = bh % args.H, hk = h / (args.H / args.Hkv);
    bool live = i < args.T;
    uint rowsEnd = min(args.T, i0 + WG);
    uint qo = qIndex(b, live ? i : 0u, h), row = rowIndex(b, h, live ? i : 0u);
    float qr[D], dor[D], dqr[D];
    for (uint d0 = 0; d0 < D; d0 += DCHUNK) [[unroll]] for (uint dc = 0; dc < DCHUNK; dc++) { uint d = d0 + dc; if (d < D) { qr[d] = live ? q[qo + d] : 0.0; dor[d] = live ? dO[qo + d] : 0.0; dqr[d] = 0.0; } }
    float L = live ? lse[row] : 0.0, dl = live ? delta[row] : 0.0;
    for (uint j0 = 0; j0 < rowsEnd; j0 += BC) {
        for (uint e = lid; e < BC * D; e += WG) {
            uint c = e / D, d = e % D, j = j0 + c;
            bool in_ = j < args.T;
            uint ko = kvIndex(b, in_ ? j : 0u, hk) + d;
            sA[e] = in_ ? k[ko] : 0.0;
            sB[e] = in_ ? v[ko] : 0.0;
        }
        barrier();
        if (live && j0 <= i) {
            uint n = min(BC, i + 1 - j0);         // keys j0..j0+n−1 ≤ i
            for (uint c = 0; c < n; c++) {
                float s = 0.0, dp = 0.0;
                for (uint d0 = 0; d0 < D; d0 += DCHUNK) [[unroll]] for (uint dc = 0; dc < DCHUNK; dc++) { uint d = d0 + dc; if (d < D) { s += qr[d] * sA[c * D + d]; dp += dor[d] * sB[c * D + d]; } }
                float ds = exp(min(args.scale * s - L, 0.0)) * (dp - dl);
                for (uint d0 = 0; d0 < D; d0 += DCHUNK) [[unroll]] for (uint dc = 0; dc < DCHUNK; dc++) { uint d = d0 + dc; if (d < D) { dqr[d] += ds * sA[c * D + d]; } }
            }
        }
        barrier();
    }
    if (!live) return;
    for (uint d0 = 0; d0 < D; d0 += DCHUNK) [[unroll]] for (uint dc = 0; dc < DCHUNK; dc++) { uint d = d0 + dc; if (d < D) { out0[qo + d] = args.scale * dqr[d]; } }
}

void main() {
    if (PASS == 1) dkdv(); else dq();
}
