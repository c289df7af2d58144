// softmax_back.comp: dx = y ⊙ (dy − Σ dy ⊙ y) per row (docs/kernels.md §4). y, dy, dx: (rows, cols); dx may alias dy.
#version 450
layout(constant_id = 0) const uint WG = 128;
layout(local_size_x_id = 0) in;
#include "common.glsl"
#include "reduce_common.glsl"
#include "rows_common.glsl"

layout(binding = 0) readonly buffer Y { float y[]; };
layout(binding = 1) readonly buffer DY { float dy[]; };
layout(binding = 2) buffer DX { float dx[]; };

void main() {
    uint row = groupIndex();
    if (row >= args.rows) return;
    uint t = gl_LocalInvocationID.x, base = row * args.cols;
    float dot = 0.0;
    for (uint c = t; c < args.cols; c += WG) dot += dy[base + c] * y[base + c];
    dot = wgSum(dot);
    for (uint c = t; c < args.cols; c += WG) dx[base + c] = y[base + c] * (dy[base + c] - dot);
}
