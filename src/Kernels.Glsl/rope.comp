// rope.comp: rotary embedding (docs/kernels.md §4, RoPE). x, y: (rows = B·T·H, D) with position t = (row / H) % T;
// cos, sin: (T, D/2) hold the angle of pair i at position t. Pair i is (i, i + D/2) for Hugging Face
// rotate-half weights, (2i, 2i+1) for llama2.c weights. sign = −1 rotates by −angle (the backward).
// One invocation per pair; y may alias x (each pair is read, then written, by one invocation).
#version 450
layout(constant_id = 0) const uint WG = 256;
layout(local_size_x_id = 0) in;

// = C# RopeArgs
layout(push_constant) uniform Args { uint pairs; uint T; uint H; uint half_; uint adjacent; float sign; } args;

layout(binding = 0) readonly buffer X { float x[]; };
layout(binding = 1) readonly buffer C { float cosT[]; };
layout(binding = 2) readonly buffer S { float sinT[]; };
layout(binding = 3) writeonly buffer Y { float y[]; };

void main() {
    uint stride = gl_NumWorkGroups.x * WG;
    for (uint p = gl_GlobalInvocationID.x; p < args.pairs; p += stride) {
        uint row = p / args.half_, i = p % args.half_;
        uint t = (row / args.H) % args.T;
        uint i0 = row * 2u * args.half_ + (args.adjacent != 0u ? 2u * i : i);
        uint i1 = i0 + (args.adjacent != 0u ? 1u : args.half_);
        float c = cosT[t * args.half_ + i], s = args.sign * sinT[t * args.half_ + i];
        float a = x[i0], b = x[i1];
        y[i0] = a * c - b * s;
        y[i1] = a * s + b * c;
    }
}
