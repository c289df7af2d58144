// elementwise.comp: pointwise ops of docs/kernels.md §4 (arithmetic, activations and their derivatives, SwiGLU,
// the gradient-clip scaling). The op is a specialization constant, so each pipeline compiles one branch.
// All tensors have n elements here; the host splits tensors above maxStorageBufferRange into bound chunks.
// Outputs may alias inputs (y = x): each element is read before it is written by the same invocation.
#version 450
#include "common.glsl"

layout(constant_id = 0) const uint OP = 0;
layout(constant_id = 1) const uint WG = 256;
layout(local_size_x_id = 1) in;

// = C# ElementwiseArgs
layout(push_constant) uniform Args { uint n; float s; } args;

layout(binding = 0) readonly buffer In0 { float x0[]; };    // x, a
layout(binding = 1) readonly buffer In1 { float x1[]; };    // b, dy, or the norm [1]
layout(binding = 2) readonly buffer In2 { float x2[]; };    // dy (SwiGLU backward)
layout(binding = 3) buffer Out0 { float y0[]; };            // y, dx, da (read by AXPY)
layout(binding = 4) writeonly buffer Out1 { float y1[]; };  // db

// Op codes (= C# ElementwiseOp).
const uint ADD = 0, MUL = 1, SCALE = 2, AXPY = 3;
const uint SILU = 10, SIGMOID = 11, SOFTPLUS = 12, EXP = 13, LOG = 14;
const uint SILU_BACK = 20, SIGMOID_BACK = 21, SOFTPLUS_BACK = 22, EXP_BACK = 23, LOG_BACK = 24;
const uint SWIGLU = 30, SWIGLU_BACK = 31, CLIP_SCALE = 40;

void main() {
    uint stride = gl_NumWorkGroups.x * WG;
    // Clip factor c/(N + 1e-6) when N = x1[0] exceeds c = s, else 1 (docs/kernels.md §4, gradient clipping).
    float clip = 1.0;
    if (OP == CLIP_SCALE) { float norm = x1[0]; clip = norm > args.s ? args.s / (norm + 1e-6) : 1.0; }
    for (uint i = gl_GlobalInvocationID.x; i < args.n; i += stride) {
        if (OP == ADD) y0[i] = x0[i] + x1[i];
        else if (OP == MUL) y0[i] = x0[i] * x1[i];
        else if (OP == SCALE) y0[i] = args.s * x0[i];
        else if (OP == AXPY) y0[i] += args.s * x0[i];
        else if (OP == SILU) { float x = x0[i]; y0[i] = x * sigmoid(x); }
        else if (OP == SIGMOID) y0[i] = sigmoid(x0[i]);
        else if (OP == SOFTPLUS) y0[i] = softplus(x0[i]);
        else if (OP == EXP) y0[i] = exp(x0[i]);
        else if (OP == LOG) y0[i] = log(x0[i]);
        else if (OP == SILU_BACK) { float x = x0[i], sg = sigmoid(x); y0[i] = x1[i] * sg * (1.0 + x * (1.0 - sg)); }
        else if (OP == SIGMOID_BACK) { float sg = sigmoid(x0[i]); y0[i] = x1[i] * sg * (1.0 - sg); }
        else if (OP == SOFTPLUS_BACK) y0[i] = x1[i] * sigmoid(x0[i]);
        else if (OP == EXP_BACK) y0[i] = x1[i] * exp(x0[i]);
        else if (OP == LOG_BACK) y0[i] = x1[i] / x0[i];
        else if (OP == SWIGLU) { float a = x0[i]; y0[i] = a * sigmoid(a) * x1[i]; }
        else if (OP == SWIGLU_BACK) {
            float a = x0[i], b = x1[i], dy = x2[i], sg = sigmoid(a);
            y0[i] = dy * b * sg * (1.0 + a * (1.0 - sg));   // da = dy ⊙ b ⊙ silu′(a)
            y1[i] = dy * a * sg;                            // db = dy ⊙ silu(a)
        }
        else if (OP == CLIP_SCALE) y0[i] = x0[i] * clip;
    }
}
