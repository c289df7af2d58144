// attention.comp: causal GQA softmax attention, flash-style forward (docs/kernels.md §2, statistics mode
// docs/method.md §5.1/§11d). One invocation per query row i of head (b, h): the row's q, its running max m,
// Σe^{s−m} and the un-normalised output live in registers; keys are visited in blocks of BC up to the
// diagonal (blocks past it are never touched) with one rescale per block. Writes o, lse_i = m + ln l
// (natural log) and, with flags bit 0, the per-row mean distance Σp·max(i−j, 0.5) and entropy lse − Σp·s
// to rowStats (B, H, T, 2), which attention_stats.comp reduces per head in a fixed order.
// Why no shared-memory K/V tiles: on lavapipe (the CI device) shared memory and barriers are slow and loads
// are scalarised anyway (docs/kernels.md §6); rows of one workgroup read the same keys, which stay in cache.
#version 450
#extension GL_EXT_control_flow_attributes : require
layout(constant_id = 0) const uint D = 64;    // head size (private arrays are sized by it)
layout(constant_id = 1) const uint WG = 32;   // query rows per workgroup
layout(constant_id = 2) const uint BC = 16;   // keys per online-softmax block
layout(local_size_x_id = 1) in;
#include "attention_common.glsl"

layout(binding = 0) readonly buffer Q { float q[]; };          // (B, T, H, D)
layout(binding = 1) readonly buffer K { float k[]; };          // (B, T, Hkv, D)
layout(binding = 2) readonly buffer Vb { float v[]; };         // (B, T, Hkv, D)
layout(binding = 3) writeonly buffer O { float o[]; };         // (B, T, H, D)
layout(binding = 4) writeonly buffer Lse { float lse[]; };     // (B, H, T)
layout(binding = 5) writeonly buffer RowStats { float rowStats[]; };  // (B, H, T, 2), flags bit 0

void main() {
    uint blocks = (args.T + WG - 1) / WG;
    uint item = groupIndex();                     // (b·H + h)·blocks + query block
    if (item >= args.B * args.H * blocks) return;
    uint bh = item / blocks, i = (item % blocks) * WG + gl_LocalInvocationID.x;
    if (i >= args.T) return;                      // no barriers below: early exit is safe
    uint b = bh / args.H, h = bh % args.H, hk = h / (args.H / args.Hkv);

    float qr[D], acc[D];
    uint qo = qIndex(b, i, h);
    for (uint d0 = 0; d0 < D; d0 += DCHUNK) [[unroll]] for (uint dc = 0; dc < DCHUNK; dc++) { uint d = d0 + dc; if (d < D) { qr[d] = q[qo + d]; acc[d] = 0.0; } }
    float m = NEG_BIG, l = 0.0, sDist = 0.0, sScore = 0.0;
    float s[BC];
    for (uint j0 = 0; j0 <= i; j0 += BC) {
        uint n = min(BC, i + 1 - j0);             // causal: keys j0..j0+n−1 ≤ i, masked before exp
        float mx = m;
        for (uint c = 0; c < n; c++) {
            uint ko = kvIndex(b, j0 + c, hk);
            float dot = 0.0;
            for (uint d0 = 0; d0 < D; d0 += DCHUNK) [[unroll]] for (uint dc = 0; dc < DCHUNK; dc++) { uint d = d0 + dc; if (d < D) { dot += qr[d] * k[ko + d]; } }
            s[c] = args.scale * dot;              // scale after the dot (docs/kernels.md §3.4)
            mx = max(mx, s[c]);
        }
        float alpha = exp(m - mx);                // ≤ 1; m starts finite, so never NaN
        l *= alpha; sDist *= alpha; sScore *= alpha;
        for (uint d0 = 0; d0 < D; d0 += DCHUNK) [[unroll]] for (uint dc = 0; dc < DCHUNK; dc++) { uint d = d0 + dc; if (d < D) { acc[d] *= alpha; } }
        for (uint c = 0; c < n; c++) {
            float p = exp(s[c] - mx);
            l += p;
            sDist += p * max(float(i - j0 - c), 0.5);
            sScore += p * s[c];
            uint vo = kvIndex(b, j0 + c, hk);
            for (uint d0 = 0; d0 < D; d0 += DCHUNK) [[unroll]] for (uint dc = 0; dc < DCHUNK; dc++) { uint d = d0 + dc; if (d < D) { acc[d] += p * v[vo + d]; } }
        }
        m = mx;
    }
    float inv = 1.0 / l;                          // l ≥ 1: the row max contributes e^0
    for (uint d0 = 0; d0 < D; d0 += DCHUNK) [[unroll]] for (uint dc = 0; dc < DCHUNK; dc++) { uint d = d0 + dc; if (d < D) { o[qo + d] = acc[d] * inv; } }
    float L = m + log(l);
    uint r = rowIndex(b, h, i);
    lse[r] = L;
    if ((args.flags & 1u) != 0u) {
        rowStats[2 * r] = sDist * inv;
        rowStats[2 * r + 1] = L - sScore * inv;   // −Σp ln p = lse − Σp·s
    }
}
