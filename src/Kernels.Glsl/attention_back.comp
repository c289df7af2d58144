// attention_back.comp: causal GQA softmax attention, backward (docs/kernels.md §2), in three passes selected
// by the specialization constant PASS, none with float atomics:
//   PASS 0  δ_i = Σ_d dO_id·O_id                                   one invocation per (b, h, i)
//   PASS 1  dK_j = scale·Σ_{h∈group} Σ_{i≥j} dS_ij q_i,            one invocation per key row (b, hk, j):
//           dV_j = Σ_{h∈group} Σ_{i≥j} P_ij dO_i                   loops over the group's heads and i ≥ j
//   PASS 2  dQ_i = scale·Σ_{j≤i} dS_ij k_j                          one invocation per query row (b, h, i)
// with P_ij = e^{scale·q_i·k_j − lse_i} (the argument is ≤ 0 up to rounding: lse_i ≥ every s_ij) and
// dS_ij = P_ij(dO_i·v_j − δ_i). Each invocation owns its output row, so sums run in a fixed order.
#version 450
#extension GL_EXT_control_flow_attributes : require
layout(constant_id = 0) const uint D = 64;    // head size
layout(constant_id = 1) const uint WG = 32;   // rows per workgroup
layout(constant_id = 2) const uint PASS = 0;
layout(local_size_x_id = 1) in;
#include "attention_common.glsl"

layout(binding = 0) readonly buffer Q { float q[]; };          // (B, T, H, D)
layout(binding = 1) readonly buffer K { float k[]; };          // (B, T, Hkv, D)
layout(binding = 2) readonly buffer Vb { float v[]; };         // (B, T, Hkv, D)
layout(binding = 3) readonly buffer Lse { float lse[]; };      // (B, H, T)
layout(binding = 4) readonly buffer DO { float dO[]; };        // (B, T, H, D)
layout(binding = 5) buffer Delta { float delta[]; };           // (B, H, T)      written by PASS 0
layout(binding = 6) buffer Out0 { float out0[]; };             // PASS 0 reads o (B, T, H, D); PASS 1 writes
                                                               // dk (B, T, Hkv, D); PASS 2 writes dq
layout(binding = 7) writeonly buffer Out1 { float out1[]; };   // PASS 1 writes dv (B, T, Hkv, D)

void main() {
    uint row = groupIndex() * WG + gl_LocalInvocationID.x;
    uint T = args.T;
    if (PASS == 0) {
        if (row >= args.B * args.H * T) return;
        uint t = row % T, bh = row / T, b = bh / args.H, h = bh % args.H;
        uint off = qIndex(b, t, h);
        float s = 0.0;
        for (uint d0 = 0; d0 < D; d0 += DCHUNK) [[unroll]] for (uint dc = 0; dc < DCHUNK; dc++) { uint d = d0 + dc; if (d < D) { s += dO[off + d] * out0[off + d]; } }
        delta[row] = s;
    } else if (PASS == 1) {
        // row = (b·Hkv + hk)·T + j
        if (row >= args.B * args.Hkv * T) return;
        uint j = row % T, bk = row / T, b = bk / args.Hkv, hk = bk % args.Hkv, g = args.H / args.Hkv;
        uint ko = kvIndex(b, j, hk);
        float kr[D], vr[D], dk[D], dv[D];
        for (uint d0 = 0; d0 < D; d0 += DCHUNK) [[unroll]] for (uint dc = 0; dc < DCHUNK; dc++) { uint d = d0 + dc; if (d < D) { kr[d] = k[ko + d]; vr[d] = v[ko + d]; dk[d] = 0.0; dv[d] = 0.0; } }
        for (uint h = hk * g; h < hk * g + g; h++)
            for (uint i = j; i < T; i++) {
                uint qo = qIndex(b, i, h), r = rowIndex(b, h, i);
                float s = 0.0, dp = 0.0;
                for (uint d0 = 0; d0 < D; d0 += DCHUNK) [[unroll]] for (uint dc = 0; dc < DCHUNK; dc++) { uint d = d0 + dc; if (d < D) { s += q[qo + d] * kr[d]; dp += dO[qo + d] * vr[d]; } }
                float p = exp(min(args.scale * s - lse[r], 0.0));
                float ds = p * (dp - delta[r]);
                for (uint d0 = 0; d0 < D; d0 += DCHUNK) [[unroll]] for (uint dc = 0; dc < DCHUNK; dc++) { uint d = d0 + dc; if (d < D) { dv[d] += p * dO[qo + d]; dk[d] += ds * q[qo + d]; } }
            }
        for (uint d0 = 0; d0 < D; d0 += DCHUNK) [[unroll]] for (uint dc = 0; dc < DCHUNK; dc++) { uint d = d0 + dc; if (d < D) { out0[ko + d] = args.scale * dk[d]; out1[ko + d] = dv[d]; } }
    } else {
        if (row >= args.B * args.H * T) return;
        uint i = row % T, bh = row / T, b = bh / args.H, h = bh % args.H, hk = h / (args.H / args.Hkv);
        uint qo = qIndex(b, i, h);
        float qr[D], dor[D], dq[D];
        for (uint d0 = 0; d0 < D; d0 += DCHUNK) [[unroll]] for (uint dc = 0; dc < DCHUNK; dc++) { uint d = d0 + dc; if (d < D) { qr[d] = q[qo + d]; dor[d] = dO[qo + d]; dq[d] = 0.0; } }
        float L = lse[row], dl = delta[row];
        for (uint j = 0; j <= i; j++) {
            uint ko = kvIndex(b, j, hk);
            float s = 0.0, dp = 0.0;
            for (uint d0 = 0; d0 < D; d0 += DCHUNK) [[unroll]] for (uint dc = 0; dc < DCHUNK; dc++) { uint d = d0 + dc; if (d < D) { s += qr[d] * k[ko + d]; dp += dor[d] * v[ko + d]; } }
            float ds = exp(min(args.scale * s - L, 0.0)) * (dp - dl);
            for (uint d0 = 0; d0 < D; d0 += DCHUNK) [[unroll]] for (uint dc = 0; dc < DCHUNK; dc++) { uint d = d0 + dc; if (d < D) { dq[d] += ds * k[ko + d]; } }
        }
        for (uint d0 = 0; d0 < D; d0 += DCHUNK) [[unroll]] for (uint dc = 0; dc < DCHUNK; dc++) { uint d = d0 + dc; if (d < D) { out0[qo + d] = args.scale * dq[d]; } }
    }
}
