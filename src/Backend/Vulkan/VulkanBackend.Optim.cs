// Reductions, AdamW and gradient-norm clipping on the Vulkan backend (docs/kernels.md §4): reduce.comp,
// adamw.comp, elementwise.comp (CLIP_SCALE). Reductions are two-pass and deterministic: fixed chunks per
// workgroup (depending only on the element count) into partial sums, then one workgroup combines the
// partials in order. Tensors above one binding are reduced chunk by chunk into the same partial array.
// Clipping never leaves the device: the norm stays in a buffer that the scaling kernel reads.
using System.Runtime.InteropServices;

namespace TaylorCalibrate.Backend.Vulkan;

/// <summary>Push constants of reduce.comp.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct ReduceArgs
{
    public uint N, Chunk, OutBase;
    public float Scale;
    public uint Post, Cols;
}

/// <summary>Push constants of adamw.comp.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct AdamWArgs
{
    public uint N;
    public float Lr, Wd, Beta1, Beta2, Eps, Bc1, Bc2;
}

public sealed partial class VulkanBackend
{
    const uint ReduceWg = 256;
    /// <summary>At most this many partials per bound chunk: the final single-workgroup pass stays short.</summary>
    const long MaxPartials = 1024;

    /// <summary>Elements per workgroup for a tensor part of <paramref name="n"/> elements.</summary>
    static long ReduceChunk(long n) => Math.Max(4L * ReduceWg, (n + MaxPartials - 1) / MaxPartials);

    /// <summary>Number of partials <see cref="ReducePartials"/> writes for a tensor of <paramref name="n"/> elements.</summary>
    long PartialCount(long n)
    {
        long total = 0;
        ForEachChunk(n, (_, count) => total += (count + ReduceChunk(count) - 1) / ReduceChunk(count));
        return total;
    }

    /// <summary>Queues MODE 0 of reduce.comp over x into partial[outBase ..]; returns the next free slot.</summary>
    long ReducePartials(uint op, VulkanTensor x, string name, VulkanTensor partial, long outBase)
    {
        ForEachChunk(x.Count, (first, count) =>
        {
            long chunk = ReduceChunk(count), groups = (count + chunk - 1) / chunk;
            var (gx, gy) = Grid(groups);
            Launch("reduce", [ReduceWg, 0, op], [Bind(x, name, false, first, count), ReadWrite(partial, "partial sums")],
                new ReduceArgs { N = (uint)count, Chunk = (uint)chunk, OutBase = (uint)outBase }, gx, gy);
            outBase += groups;
        });
        return outBase;
    }

    /// <inheritdoc />
    public void Reduce(ReduceOp op, Tensor x, Tensor result)
    {
        var vx = F32(x, "x");
        var vr = F32(result, "result");
        Check.That(vr.Count >= 1, $"tensor 'result' {vr.ShapeText} must have at least one element");
        uint code = op switch
        {
            ReduceOp.Sum or ReduceOp.Mean => 0u, ReduceOp.SumOfSquares => 1u, ReduceOp.MaxAbs => 2u,
            _ => throw new ArgumentException($"unknown reduction {op}"),
        };
        long parts = PartialCount(vx.Count);
        using var partial = Scratch(parts);
        ReducePartials(code, vx, "x", partial, 0);
        // The mean of no elements is NaN (0·NaN), as on the CPU (0/0): see IBackend.Reduce.
        float scale = op != ReduceOp.Mean ? 1f : vx.Count > 0 ? (float)(1.0 / vx.Count) : float.NaN;
        Launch("reduce", [ReduceWg, 1, code], [Read(partial, "partial sums"), Bind(vr, "result", true, 0, 1)],
            new ReduceArgs { N = (uint)parts, Scale = scale }, 1);
    }

    /// <inheritdoc />
    public void AdamW(Tensor param, Tensor grad, Tensor m, Tensor v, AdamWSpec spec)
    {
        var vp = F32(param, "param");
        var vg = F32(grad, "grad");
        var vm = F32(m, "m");
        var vv = F32(v, "v");
        Check.SameCount(vp, "param", vg, "grad");
        Check.SameCount(vp, "param", vm, "m");
        Check.SameCount(vp, "param", vv, "v");
        Check.That(spec.Step >= 1, $"AdamW step {spec.Step} must start at 1");
        var baseArgs = new AdamWArgs
        {
            Lr = spec.LearningRate, Wd = spec.WeightDecay, Beta1 = spec.Beta1, Beta2 = spec.Beta2, Eps = spec.Epsilon,
            Bc1 = (float)(1 - Math.Pow(spec.Beta1, spec.Step)), Bc2 = (float)(1 - Math.Pow(spec.Beta2, spec.Step)),
        };
        ForEachChunk(vp.Count, (first, count) =>
        {
            var args = baseArgs;
            args.N = (uint)count;
            Launch("adamw", [ElementwiseWg],
                [Bind(vg, "grad", false, first, count), Bind(vp, "param", true, first, count), Bind(vm, "m", true, first, count), Bind(vv, "v", true, first, count)],
                args, Math.Min(Ceil(count, ElementwiseWg), 4096u));
        });
    }

    /// <inheritdoc />
    public void ClipGradNorm(IReadOnlyList<Tensor> grads, float maxNorm, Tensor norm)
    {
        ArgumentNullException.ThrowIfNull(grads);
        var vn = F32(norm, "norm");
        Check.That(vn.Count >= 1, $"tensor 'norm' {vn.ShapeText} must have at least one element");
        var vg = grads.Select((g, i) => F32(g, $"grads[{i}]")).ToArray();
        long parts = vg.Sum(g => PartialCount(g.Count));
        using var partial = Scratch(parts);
        long slot = 0;
        for (int i = 0; i < vg.Length; i++) slot = ReducePartials(1, vg[i], $"grads[{i}]", partial, slot);
        // N = √(Σ partials) into norm[0], then every gradient scales itself by the factor read from norm.
        Launch("reduce", [ReduceWg, 1, 0], [Read(partial, "partial sums"), Bind(vn, "norm", true, 0, 1)],
            new ReduceArgs { N = (uint)parts, Scale = 1f, Post = 1 }, 1);
        for (int i = 0; i < vg.Length; i++)
            Elementwise(ElementwiseOp.ClipScale, maxNorm, [(vg[i], $"grads[{i}]")], [(vg[i], $"grads[{i}]")], (vn, "norm"));
    }
}
