// attention_probs.comp: the causal attention probabilities P_ij = e^{scale·q_i·k_j − lse_i} for j ≤ i,
// 0 above the diagonal (a diagnostic for small T; docs/kernels.md §2). One invocation per element of
// probs (B, H, T, T); lse comes from attention.comp.
#version 450
#extension GL_EXT_control_flow_attributes : require
layout(constant_id = 0) const uint D = 64;
layout(constant_id = 1) const uint WG = 64;
layout(local_size_x_id = 1) in;
#include "attention_common.glsl"

layout(binding = 0) readonly buffer Q { float q[]; };          // (B, T, H, D)
layout(binding = 1) readonly buffer K { float k[]; };          // (B, T, Hkv, D)
layout(binding = 2) readonly buffer Lse { float lse[]; };      // (B, H, T)
layout(binding = 3) writeonly buffer P { float probs[]; };     // (B, H, T, T)

void main() {
    uint e = groupIndex() * WG + gl_LocalInvocationID.x;
    uint T = args.T;
    if (e >= args.B * args.H * T * T) return;
    uint j = e % T, i = (e / T) % T, bh = e / (T * T);
    uint b = bh / args.H, h = bh % args.H, hk = h / (args.H / args.Hkv);
    float p = 0.0;
    if (j <= i) {                                  // mask before exp
        uint qo = qIndex(b, i, h), ko = kvIndex(b, j, hk);
        float dot = 0.0;
        for (uint d0 = 0; d0 < D; d0 += DCHUNK) [[unroll]] for (uint dc = 0; dc < DCHUNK; dc++) { uint d = d0 + dc; if (d < D) { dot += q[qo + d] * k[ko + d]; } }
        p = exp(args.scale * dot - lse[bh * T + i]);
    }
    probs[e] = p;
}
