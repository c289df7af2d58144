// embedding.comp: y[n,:] = table[ids[n],:] (docs/kernels.md §4, Embedding); ids outside [0, V) give a 0 row.
// table: (V, D); ids: I32 (N); y: (N, D). One invocation per output element.
#version 450
layout(constant_id = 0) const uint WG = 256;
layout(local_size_x_id = 0) in;

// = C# EmbeddingArgs
layout(push_constant) uniform Args { uint N; uint D; uint V; } args;

layout(binding = 0) readonly buffer Table { float table[]; };
layout(binding = 1) readonly buffer Ids { int ids[]; };
layout(binding = 2) writeonly buffer Y { float y[]; };

void main() {
    uint stride = gl_NumWorkGroups.x * WG;
    for (uint e = gl_GlobalInvocationID.x; e < args.N * args.D; e += stride) {
        uint n = e / args.D, d = e % args.D;
        int id = ids[n];
        y[e] = (id >= 0 && uint(id) < args.V) ? table[uint(id) * args.D + d] : 0.0;
    }
}
