// attention_tiled.comp: causal GQA softmax attention, flash-style forward for GPUs (docs/kernels.md §2; the
// CPU-driver twin is attention.comp, same outputs). One workgroup per (b, h, block of WG query rows), one
// invocation per query row with its q row, running max m, Σe^{s−m} and un-normalised output in registers.
// Key/value tiles of BC rows are loaded cooperatively into shared memory once per workgroup and read by
// every row (broadcast reads), instead of every invocation streaming K and V from memory. Tiles start at
// key 0 and stop at the block's last row (causal); rows mask keys past their diagonal before exp. Outputs
// as attention.comp: o, lse_i = m + ln l (natural log) and, with flags bit 0, rowStats (B, H, T, 2).
#version 450
#extension GL_EXT_control_flow_attributes : require
layout(constant_id = 0) const uint D = 64;    // head size
layout(constant_id = 1) const uint WG = 64;   // query rows per workgroup
layout(constant_id = 2) const uint BC = 32;   // keys per shared tile (2·BC·D floats of shared memory)
layout(local_size_x_id = 1) in;
#include "attention_common.glsl"

layout(binding = 0) readonly buffer Q { float q[]; };          // (B, T, H, D)
layout(binding = 1) readonly buffer K { float k[]; };          // (B, T, Hkv, D)
layout(binding = 2) readonly buffer Vb { float v[]; };         // (B, T, Hkv, D)
layout(binding = 3) writeonly buffer O { float o[]; };         // (B, T, H, D)
layout(binding = 4) writeonly buffer Lse { float lse[]; };     // (B, H, T)
layout(binding = 5) writeonly buffer RowStats { float rowStats[]; };  // (B, H, T, 2), flags bit 0

shared float sK[BC * D];    // keys j0..j0+BC−1 of kv head hk (rows past T are 0 and never used)
shared float sV[BC * D];

void main() {
    uint blocks = (args.T + WG - 1) / WG;
    uint item = groupIndex();                     // (b·H + h)·blocks + query block
    if (item >= args.B * args.H * blocks) return; // uniform per workgroup: before any barrier
    uint bh = item / blocks, i0 = (item % blocks) * WG, lid = gl_LocalInvocationID.x, i = i0 + lid;
    uint b = bh / args.H, h = bh % args.H, hk = h / (args.H / args.Hkv);
    bool live = i < args.T;                       // dead rows still load tiles and meet every barrier
    uint rowsEnd = min(args.T, i0 + WG);          // keys < rowsEnd are visible to some row of the block

    float qr[D], acc[D];
    uint qo = qIndex(b, live ? i : 0u, h);
    for (uint d0 = 0; d0 < D; d0 += DCHUNK) [[unroll]] for (uint dc = 0; dc < DCHUNK; dc++) { uint d = d0 + dc; if (d < D) { qr[d] = live ? q[qo + d] : 0.0; acc[d] = 0.0; } }
    float m = NEG_BIG, l = 0.0, sDist = 0.0, sScore = 0.0;
    float s[BC];
    for (uint j0 = 0; j0 < rowsEnd; j0 += BC) {
        for (uint e = lid; e < BC * D; e += WG) {
            uint c = e / D, d = e % D, j = j0 + c;
            bool in_ = j < args.T;
            uint ko = kvIndex(b, in_ ? j : 0u, hk) + d;
            sK[e] = in_ ? k[ko] : 0.0;
            sV[e] = in_ ? v[ko] : 0.0;
        }
        barrier();
        if (live && j0 <= i) {
            uint n = min(BC, i + 1 - j0);         // causal: keys j0..j0+n−1 ≤ i, masked before exp
            float mx = m;
            for (uint c = 0; c < n; c++) {
                float dot = 0.0;
                for (uint d0 = 0; d0 < D; d0 += DCHUNK) [[unroll]] for (uint dc = 0; dc < DCHUNK; dc++) { uint d = d0 + dc; if (d < D) { dot += qr[d] * sK[c * D + d]; } }
                s[c] = args.scale * dot;          // scale after the dot (docs/kernels.md §3.4)
                mx = max(mx, s[c]);
            }
            float alpha = exp(m - mx);            // ≤ 1; m starts finite, so never NaN
            l *= alpha; sDist *= alpha; sScore *= alpha;
            for (uint d0 = 0; d0 < D; d0 += DCHUNK) [[unroll]] for (uint dc = 0; dc < DCHUNK; dc++) { uint d = d0 + dc; if (d < D) { acc[d] *= alpha; } }
            for (uint c = 0; c < n; c++) {
                float p = exp(s[c] - mx);
                l += p;
                sDist += p * max(float(i - j0 - c), 0.5);
                sScore += p * s[c];
                for (uint d0 = 0; d0 < D; d0 += DCHUNK) [[unroll]] for (uint dc = 0; dc < DCHUNK; dc++) { uint d = d0 + dc; if (d < D) { acc[d] += p * sV[c * D + d]; } }
            }
            m = mx;
        }
        barrier();                                // the tile is overwritten next
    }
    if (!live) return;
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
