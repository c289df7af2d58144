// attention_stats.comp: per-head means of the per-row attention statistics written by attention.comp
// (docs/method.md §5.1: mean distance, mean entropy). One workgroup per (b, h): each invocation sums a fixed
// strided subset of rows, then a shared-memory tree adds the partial sums, so the result is deterministic
// and independent of the subgroup size.
#version 450
layout(constant_id = 0) const uint D = 64;    // unused here; keeps the attention_common.glsl contract
layout(constant_id = 1) const uint WG = 64;   // power of two
layout(local_size_x_id = 1) in;
#include "attention_common.glsl"

layout(binding = 0) readonly buffer RowStats { float rowStats[]; };  // (B, H, T, 2)
layout(binding = 1) writeonly buffer Stats { float stats[]; };       // (B, H, 2)

shared float part[2 * WG];

void main() {
    uint bh = groupIndex(), x = gl_LocalInvocationID.x;
    bool live = bh < args.B * args.H;              // uniform per workgroup
    float dist = 0.0, ent = 0.0;
    if (live)
        for (uint t = x; t < args.T; t += WG) {
            uint r = bh * args.T + t;
            dist += rowStats[2 * r];
            ent += rowStats[2 * r + 1];
        }
    part[x] = dist; part[WG + x] = ent;
    barrier();
    for (uint w = WG / 2; w > 0; w /= 2) {
        if (x < w) { part[x] += part[x + w]; part[WG + x] += part[WG + x + w]; }
        barrier();
    }
    if (live && x == 0) {
        stats[2 * bh] = part[0] / float(args.T);
        stats[2 * bh + 1] = part[WG] / float(args.T);
    }
}
