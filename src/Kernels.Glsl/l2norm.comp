// l2norm.comp: y[r,:] = x[r,:]·rstd[r], rstd[r] = (Σ x[r,:]² + eps)^−½ (docs/kernels.md §4, L2 norm).
// x, y: (rows, cols); rstd: (rows). One workgroup per row, fixed-order tree sum. y may alias x.
#version 450
layout(constant_id = 0) const uint WG = 128;
layout(local_size_x_id = 0) in;
#include "common.glsl"
#include "reduce_common.glsl"
#include "rows_common.glsl"

layout(binding = 0) readonly buffer X { float x[]; };
layout(binding = 1) writeonly buffer Y { float y[]; };
layout(binding = 2) writeonly buffer R { float rstd[]; };

void main() {
    uint row = groupIndex();
    if (row >= args.rows) return;
    uint t = gl_LocalInvocationID.x, base = row * args.cols;
    float ss = 0.0;
    for (uint c = t; c < args.cols; c += WG) { float v = x[base + c]; ss += v * v; }
    ss = wgSum(ss);
    float r = 1.0 / sqrt(ss + args.eps);
    for (uint c = t; c < args.cols; c += WG) y[base + c] = x[base + c] * r;
    if (t == 0u) rstd[row] = r;
}
