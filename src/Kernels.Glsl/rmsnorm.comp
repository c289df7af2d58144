// rmsnorm.comp: y[r,:] = w ⊙ x[r,:]·rstd[r], rstd[r] = (mean(x[r,:]²) + eps)^−½ (docs/kernels.md §4, RMSNorm).
// x, y: (rows, cols); w: (cols); rstd: (rows), saved for the backward. One workgroup per row; the sum of
// squares is a fixed-order tree (deterministic). y may alias x: every x is read before the first write.
#version 450
layout(constant_id = 0) const uint WG = 128;
layout(local_size_x_id = 0) in;
#include "common.glsl"
#include "reduce_common.glsl"
#include "rows_common.glsl"

layout(binding = 0) readonly buffer X { float x[]; };
layout(binding = 1) readonly buffer W { float w[]; };
layout(binding = 2) writeonly buffer Y { float y[]; };
layout(binding = 3) writeonly buffer R { float rstd[]; };

void main() {
    uint row = groupIndex();
    if (row >= args.rows) return;                 // whole workgroup: barriers stay uniform
    uint t = gl_LocalInvocationID.x, base = row * args.cols;
    float ss = 0.0;
    for (uint c = t; c < args.cols; c += WG) { float v = x[base + c]; ss += v * v; }
    ss = wgSum(ss);
    float r = 1.0 / sqrt(ss / float(args.cols) + args.eps);
    for (uint c = t; c < args.cols; c += WG) y[base + c] = w[c] * (x[base + c] * r);
    if (t == 0u) rstd[row] = r;
}
