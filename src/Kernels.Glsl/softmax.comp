// softmax.comp: y[r,:] = e^{x − m} / Σ e^{x − m}, m = max x[r,:] (row softmax, docs/kernels.md §4).
// x, y: (rows, cols). One workgroup per row; max and sum are fixed-order trees. y may alias x.
#version 450
layout(constant_id = 0) const uint WG = 128;
layout(local_size_x_id = 0) in;
#include "common.glsl"
#include "reduce_common.glsl"
#include "rows_common.glsl"

layout(binding = 0) readonly buffer X { float x[]; };
layout(binding = 1) writeonly buffer Y { float y[]; };

void main() {
    uint row = groupIndex();
    if (row >= args.rows) return;
    uint t = gl_LocalInvocationID.x, base = row * args.cols;
    float m = NEG_BIG;
    for (uint c = t; c < args.cols; c += WG) m = max(m, x[base + c]);
    m = wgMax(m);
    float s = 0.0;
    for (uint c = t; c < args.cols; c += WG) s += exp(x[base + c] - m);
    s = wgSum(s);
    float inv = 1.0 / s;
    for (uint c = t; c < args.cols; c += WG) y[base + c] = exp(x[base + c] - m) * inv;
}
