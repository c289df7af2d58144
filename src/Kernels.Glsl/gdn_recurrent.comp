// gdn_recurrent.comp: token-recurrent gated delta rule, forward (docs/kernels.md §3.1). Per (b, h) and value
// column j: S[:, j] ← e^{g_t}·S[:, j]; u = β_t(v_tj − S[:, j]·k_t); S[:, j] += k_t·u; o_tj = scale·S[:, j]·q_t.
// One invocation per column (fp32 registers), workgroups over (b, h, column block); with GDN_L2 the
// invocation normalises q_t, k_t itself (every column needs the same K-vectors, which stay in cache).
#version 450
#include "gdn_common.glsl"

layout(binding = 0) readonly buffer Q { float q[]; };         // (B, T, H, DK)
layout(binding = 1) readonly buffer K { float k[]; };         // (B, T, H, DK)
layout(binding = 2) readonly buffer Vb { float v[]; };        // (B, T, H, DV)
layout(binding = 3) readonly buffer G { float g[]; };         // (B, T, H) log decay ≤ 0
layout(binding = 4) readonly buffer Beta { float beta[]; };   // (B, T, H)
layout(binding = 5) readonly buffer H0 { float h0[]; };       // (B, H, DK, DV) when GDN_H0
layout(binding = 6) writeonly buffer O { float o[]; };        // (B, T, H, DV)
layout(binding = 7) writeonly buffer Ht { float ht[]; };      // (B, H, DK, DV) when GDN_FINAL

void main() {
    uint blocks = (DV + WG - 1) / WG;
    uint item = groupIndex();
    if (item >= args.B * args.H * blocks) return;
    uint bh = item / blocks, j = (item % blocks) * WG + gl_LocalInvocationID.x;
    if (j >= DV) return;                          // no barriers: early exit is safe
    uint b = bh / args.H, h = bh % args.H;
    bool l2 = (args.flags & GDN_L2) != 0u;

    float S[DK];
    for (uint i0 = 0; i0 < DK; i0 += KCHUNK) [[unroll]] for (uint ic = 0; ic < KCHUNK; ic++) {
        uint i = i0 + ic;
        if (i < DK) S[i] = (args.flags & GDN_H0) != 0u ? h0[stateIndex(bh, i, j)] : 0.0;
    }
    for (uint t = 0; t < args.T; t++) {
        uint ko = qkIndex(b, t, h), gi = gateIndex(b, t, h);
        float rq = 1.0, rk = 1.0;
        if (l2) {
            float sq = 0.0, sk = 0.0;
            for (uint i0 = 0; i0 < DK; i0 += KCHUNK) [[unroll]] for (uint ic = 0; ic < KCHUNK; ic++) {
                uint i = i0 + ic;
                if (i < DK) { float a = q[ko + i], c = k[ko + i]; sq += a * a; sk += c * c; }
            }
            rq = inversesqrt(sq + 1e-6); rk = inversesqrt(sk + 1e-6);
        }
        float decay = exp(g[gi]);                 // g ≤ 0: no overflow
        float kS = 0.0;
        for (uint i0 = 0; i0 < DK; i0 += KCHUNK) [[unroll]] for (uint ic = 0; ic < KCHUNK; ic++) {
            uint i = i0 + ic;
            if (i < DK) { S[i] *= decay; kS += S[i] * k[ko + i]; }
        }
        float u = beta[gi] * (v[vIndex(b, t, h) + j] - rk * kS);   // norms applied after the dot
        float uk = u * rk, acc = 0.0;
        for (uint i0 = 0; i0 < DK; i0 += KCHUNK) [[unroll]] for (uint ic = 0; ic < KCHUNK; ic++) {
            uint i = i0 + ic;
            if (i < DK) { S[i] += uk * k[ko + i]; acc += S[i] * q[ko + i]; }
        }
        o[vIndex(b, t, h) + j] = args.scale * rq * acc;
    }
    if ((args.flags & GDN_FINAL) != 0u)
        for (uint i0 = 0; i0 < DK; i0 += KCHUNK) [[unroll]] for (uint ic = 0; ic < KCHUNK; ic++) {
            uint i = i0 + ic;
            if (i < DK) ht[stateIndex(bh, i, j)] = S[i];
        }
}
