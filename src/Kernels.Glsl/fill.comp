// fill.comp: y[i] = value. The smallest kernel; also the smoke test of the build-time glslc pipeline.
#version 450
layout(local_size_x = 256) in;
layout(push_constant) uniform Args { uint n; float value; } args;
layout(binding = 0) writeonly buffer Y { float y[]; };
void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i < args.n) y[i] = args.value;
}
