// rmsnorm_back.comp: RMSNorm backward (docs/kernels.md §4). With g = w ⊙ dy and r = rstd[row]:
//   MODE 0 (one workgroup per row): dx = r·g − x·r³·mean(g ⊙ x)   (dx overwritten; may alias dy)
//   MODE 1 (column c, row block b): partial[b, c] = Σ_{rows of block b, in order} dy·x·r
// The host then adds Σ_b partial[b, c] into dw[c] in block order (reduce.comp MODE 2): a deterministic
// column reduction without float atomics. x, dy, dx: (rows, cols); w, dw: (cols); rstd: (rows).
#version 450
layout(constant_id = 0) const uint WG = 128;
layout(constant_id = 1) const uint MODE = 0;
layout(local_size_x_id = 0) in;
#include "common.glsl"
#include "reduce_common.glsl"
#include "rows_common.glsl"

layout(binding = 0) readonly buffer DY { float dy[]; };
layout(binding = 1) readonly buffer X { float x[]; };
layout(binding = 2) readonly buffer W { float w[]; };
layout(binding = 3) readonly buffer R { float rstd[]; };
layout(binding = 4) buffer DX { float dx[]; };            // MODE 0: dx; MODE 1: partial sums (blocks, cols)

void main() {
    if (MODE == 0u) {
        uint row = groupIndex();
        if (row >= args.rows) return;
        uint t = gl_LocalInvocationID.x, base = row * args.cols;
        float r = rstd[row];
        float dot = 0.0;
        for (uint c = t; c < args.cols; c += WG) dot += w[c] * dy[base + c] * x[base + c];
        dot = wgSum(dot) / float(args.cols);
        for (uint c = t; c < args.cols; c += WG) {
            float g = w[c] * dy[base + c];
            dx[base + c] = r * g - x[base + c] * (r * r * r) * dot;
        }
    } else {
        uint c = gl_GlobalInvocationID.x, b = gl_WorkGroupID.y;
        if (c >= args.cols) return;
        uint r0 = b * args.block, r1 = min(args.rows, r0 + args.block);
        float acc = 0.0;
        for (uint r = r0; r < r1; r++) acc += dy[r * args.cols + c] * x[r * args.cols + c] * rstd[r];
        dx[b * args.cols + c] = acc;
    }
}
