// Normalisation and position ops on the Vulkan backend (docs/kernels.md §4): RMSNorm (rmsnorm.comp,
// rmsnorm_back.comp + reduce.comp MODE 2 for the deterministic dw column sums), L2 norm (l2norm*.comp) and
// RoPE (rope.comp). Row kernels run one workgroup per row and bind whole tensors, so each tensor must fit
// one binding (maxStorageBufferRange); Bind throws an ArgumentException naming the tensor otherwise.
using System.Runtime.InteropServices;

namespace TaylorCalibrate.Backend.Vulkan;

/// <summary>Push constants of the row kernels (= GLSL Args in rows_common.glsl).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct RowArgs
{
    public uint Rows, Cols;
    public float Eps;
    public uint Block;
}

/// <summary>Push constants of rope.comp.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct RopeArgs
{
    public uint Pairs, T, H, Half, Adjacent;
    public float Sign;
}

public sealed partial class VulkanBackend
{
    /// <summary>Workgroup size of the row kernels (a power of two: the reduction tree halves it).</summary>
    const uint RowWg = 128;
    /// <summary>Rows per block of the RMSNorm dw partial sums.</summary>
    const uint RmsDwBlock = 256;

    /// <summary>An uninitialised temporary of <paramref name="count"/> elements; dispose it after queuing its last use.</summary>
    internal VulkanTensor Scratch(long count, DType dtype = DType.F32)
    {
        lock (gate) return new(this, [checked((int)Math.Max(count, 1))], dtype, mem.Device.Create(4UL * (ulong)Math.Max(count, 1)));
    }

    void RowLaunch(string shader, uint[] spec, Binding[] b, uint rows, uint cols, float eps = 0)
    {
        var (x, y) = Grid(rows);
        Launch(shader, spec, b, new RowArgs { Rows = rows, Cols = cols, Eps = eps }, x, y);
    }

    /// <inheritdoc />
    public void RmsNorm(Tensor x, Tensor w, Tensor y, Tensor rstd, float eps)
    {
        var vx = F32(x, "x");
        var vw = F32(w, "w");
        var vy = F32(y, "y");
        var vr = F32(rstd, "rstd");
        int cols = checked((int)vw.Count);
        int rows = Check.Rows(vx, "x", cols);
        Check.SameCount(vx, "x", vy, "y");
        Check.That(vr.Count == rows, $"tensor 'rstd' {vr.ShapeText} must have {rows} elements (one per row of x)");
        if (rows == 0) return;
        RowLaunch("rmsnorm", [RowWg], [Read(vx, "x"), Read(vw, "w"), Write(vy, "y"), Write(vr, "rstd")], (uint)rows, (uint)cols, eps);
    }

    /// <inheritdoc />
    public void RmsNormBackward(Tensor dy, Tensor x, Tensor w, Tensor rstd, Tensor dx, Tensor dw)
    {
        var vdy = F32(dy, "dy");
        var vx = F32(x, "x");
        var vw = F32(w, "w");
        var vr = F32(rstd, "rstd");
        var vdx = F32(dx, "dx");
        var vdw = F32(dw, "dw");
        int cols = checked((int)vw.Count);
        int rows = Check.Rows(vx, "x", cols);
        Check.SameCount(vx, "x", vdy, "dy");
        Check.SameCount(vx, "x", vdx, "dx");
        Check.SameCount(vw, "w", vdw, "dw");
        Check.That(vr.Count == rows, $"tensor 'rstd' {vr.ShapeText} must have {rows} elements (one per row of x)");
        if (rows == 0) return;
        // dw first: dx may alias dy, and the dx pass overwrites it.
        uint blocks = Ceil(rows, RmsDwBlock);
        using (var partial = Scratch((long)blocks * cols))
        {
            Launch("rmsnorm_back", [RowWg, 1], [Read(vdy, "dy"), Read(vx, "x"), Read(vw, "w"), Read(vr, "rstd"), Write(partial, "dw partial sums")],
                new RowArgs { Rows = (uint)rows, Cols = (uint)cols, Block = RmsDwBlock }, Ceil(cols, RowWg), blocks);
            Launch("reduce", [ReduceWg, 2, 0], [Read(partial, "dw partial sums"), ReadWrite(vdw, "dw")],
                new ReduceArgs { N = blocks, Cols = (uint)cols }, Ceil(cols, ReduceWg));
        }
        RowLaunch("rmsnorm_back", [RowWg, 0], [Read(vdy, "dy"), Read(vx, "x"), Read(vw, "w"), Read(vr, "rstd"), Write(vdx, "dx")], (uint)rows, (uint)cols);
    }

    /// <inheritdoc />
    public void L2Norm(Tensor x, Tensor y, Tensor rstd, int cols, float eps)
    {
        var vx = F32(x, "x");
        var vy = F32(y, "y");
        var vr = F32(rstd, "rstd");
        int rows = Check.Rows(vx, "x", cols);
        Check.SameCount(vx, "x", vy, "y");
        Check.That(vr.Count == rows, $"tensor 'rstd' {vr.ShapeText} must have {rows} elements (one per row of x)");
        if (rows == 0) return;
        RowLaunch("l2norm", [RowWg], [Read(vx, "x"), Write(vy, "y"), Write(vr, "rstd")], (uint)rows, (uint)cols, eps);
    }

    /// <inheritdoc />
    public void L2NormBackward(Tensor dy, Tensor y, Tensor rstd, Tensor dx, int cols)
    {
        var vdy = F32(dy, "dy");
        var vy = F32(y, "y");
        var vr = F32(rstd, "rstd");
        var vdx = F32(dx, "dx");
        int rows = Check.Rows(vy, "y", cols);
        Check.SameCount(vy, "y", vdy, "dy");
        Check.SameCount(vy, "y", vdx, "dx");
        Check.That(vr.Count == rows, $"tensor 'rstd' {vr.ShapeText} must have {rows} elements (one per row of y)");
        if (rows == 0) return;
        RowLaunch("l2norm_back", [RowWg], [Read(vdy, "dy"), Read(vy, "y"), Read(vr, "rstd"), Write(vdx, "dx")], (uint)rows, (uint)cols);
    }

    /// <inheritdoc />
    public void Rope(Tensor x, Tensor cos, Tensor sin, Tensor y, RopeLayout layout, bool inverse)
    {
        var vx = F32(x, "x");
        var vc = F32(cos, "cos");
        var vs = F32(sin, "sin");
        var vy = F32(y, "y");
        Check.That(vx.Rank >= 3, $"tensor 'x' {vx.ShapeText} must be [B,T,H,D] or [T,H,D]");
        int t = vx.Dim(-3), h = vx.Dim(-2), d = vx.Dim(-1);
        Check.That(d % 2 == 0, $"tensor 'x' {vx.ShapeText}: head dimension {d} must be even for RoPE");
        int half = d / 2;
        Check.That(vc.Count >= (long)t * half && vc.Dim(-1) == half, $"tensor 'cos' {vc.ShapeText} must be [T,{half}] with T ≥ {t}");
        Check.That(vs.Count >= (long)t * half && vs.Dim(-1) == half, $"tensor 'sin' {vs.ShapeText} must be [T,{half}] with T ≥ {t}");
        Check.SameCount(vx, "x", vy, "y");
        long pairs = vx.Count / 2;
        if (pairs == 0) return;
        var args = new RopeArgs
        {
            Pairs = checked((uint)pairs), T = (uint)t, H = (uint)h, Half = (uint)half,
            Adjacent = layout == RopeLayout.Adjacent ? 1u : 0, Sign = inverse ? -1f : 1f,
        };
        Launch("rope", [ElementwiseWg], [Read(vx, "x"), Read(vc, "cos"), Read(vs, "sin"), Write(vy, "y")], args, Math.Min(Ceil(pairs, ElementwiseWg), 4096u));
    }
}
