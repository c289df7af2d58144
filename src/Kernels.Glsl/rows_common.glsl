// rows_common.glsl: the argument block shared by the row-wise kernels (RMSNorm, L2 norm, softmax, and
// their backwards): one workgroup per row of `cols` contiguous elements; rows beyond 65535 wrap into
// gl_WorkGroupID.y (groupIndex()). = C# RowArgs.
#ifndef ROWS_COMMON_GLSL
#define ROWS_COMMON_GLSL
layout(push_constant) uniform Args {
    uint rows;
    uint cols;
    float eps;
    uint block;    // rows per partial-sum block (RMSNorm dw)
} args;
#endif
