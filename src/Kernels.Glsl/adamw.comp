// adamw.comp: one decoupled AdamW step (docs/kernels.md §4, PyTorch semantics), elementwise:
//   θ ← θ(1 − lr·wd); m ← β₁m + (1−β₁)g; v ← β₂v + (1−β₂)g²; θ ← θ − lr·(m/bc1)/(√(v/bc2) + ε),
// bc1 = 1 − β₁ᵗ and bc2 = 1 − β₂ᵗ computed on the host in double. All tensors (n); the host splits
// tensors above one binding into chunks.
#version 450
layout(constant_id = 0) const uint WG = 256;
layout(local_size_x_id = 0) in;

// = C# AdamWArgs
layout(push_constant) uniform Args { uint n; float lr; float wd; float beta1; float beta2; float eps; float bc1; float bc2; } args;

layout(binding = 0) readonly buffer G { float grad[]; };
layout(binding = 1) buffer P { float param[]; };
layout(binding = 2) buffer M { float m1[]; };
layout(binding = 3) buffer V { float v2[]; };

void main() {
    uint stride = gl_NumWorkGroups.x * WG;
    for (uint i = gl_GlobalInvocationID.x; i < args.n; i += stride) {
        float g = grad[i];
        float p = param[i] * (1.0 - args.lr * args.wd);
        float m = args.beta1 * m1[i] + (1.0 - args.beta1) * g;
        float v = args.beta2 * v2[i] + (1.0 - args.beta2) * g * g;
        m1[i] = m;
        v2[i] = v;
        param[i] = p - args.lr * (m / args.bc1) / (sqrt(v / args.bc2) + args.eps);
    }
}
