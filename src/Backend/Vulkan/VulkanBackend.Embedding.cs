// Embedding gather and its deterministic scatter-add on the Vulkan backend (docs/kernels.md §4; embedding.comp,
// embedding_back.comp). The backward downloads the N ids (a synchronisation point, cheap: N is B·T),
// groups positions by id on the host (CSR, stable in n), and a kernel sums each id's rows in order of n,
// so the result is bitwise reproducible and equals a sequential loop over n. No float atomics.
using System.Runtime.InteropServices;

namespace TaylorCalibrate.Backend.Vulkan;

/// <summary>Push constants of embedding.comp and embedding_back.comp.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct EmbeddingArgs
{
    public uint N, D, V;
}

public sealed unsafe partial class VulkanBackend
{
    /// <inheritdoc />
    public void Embedding(Tensor table, Tensor ids, Tensor y)
    {
        var vt = F32(table, "table");
        var vi = I32(ids, "ids");
        var vy = F32(y, "y");
        Check.That(vt.Rank == 2, $"tensor 'table' {vt.ShapeText} must be [V,D]");
        int v = vt.Dim(0), d = vt.Dim(1);
        Check.That(vy.Count == vi.Count * d, $"tensor 'y' {vy.ShapeText} must have {vi.Count}·{d} elements ([N,D] for N ids)");
        CheckIds(vi, "ids", v, negativeOk: false, $"'table' {vt.ShapeText}");
        if (vy.Count == 0) return;
        var args = new EmbeddingArgs { N = (uint)vi.Count, D = (uint)d, V = (uint)v };
        Launch("embedding", [ElementwiseWg], [Read(vt, "table"), Read(vi, "ids"), Write(vy, "y")], args, Math.Min(Ceil(vy.Count, ElementwiseWg), 4096u));
    }

    /// <inheritdoc />
    public void EmbeddingBackward(Tensor ids, Tensor dy, Tensor dtable)
    {
        var vi = I32(ids, "ids");
        var vdy = F32(dy, "dy");
        var vt = F32(dtable, "dtable");
        Check.That(vt.Rank == 2, $"tensor 'dtable' {vt.ShapeText} must be [V,D]");
        int v = vt.Dim(0), d = vt.Dim(1);
        int n = checked((int)vi.Count);
        Check.That(vdy.Count == (long)n * d, $"tensor 'dy' {vdy.ShapeText} must have {n}·{d} elements ([N,D] for N ids)");
        if (n == 0 || d == 0) return;

        CheckIds(vi, "ids", v, negativeOk: false, $"'dtable' {vt.ShapeText}");
        var idv = new int[n];
        Download(vi, idv);
        // CSR by id: counting sort, stable in n (every id lies in [0, V): checked above).
        var count = new Dictionary<int, int>();
        foreach (var id in idv)
            if (id >= 0 && id < v) count[id] = count.GetValueOrDefault(id) + 1;
        if (count.Count == 0) return;
        var segIds = count.Keys.Order().ToArray();
        var start = new int[segIds.Length + 1];
        var slot = new Dictionary<int, int>(segIds.Length);
        for (int s = 0; s < segIds.Length; s++)
        {
            start[s + 1] = start[s] + count[segIds[s]];
            slot[segIds[s]] = start[s];
        }
        var perm = new int[start[^1]];
        for (int i = 0; i < n; i++)
            if (idv[i] >= 0 && idv[i] < v) perm[slot[idv[i]]++] = i;

        using var tPerm = Scratch(perm.Length, DType.I32);
        using var tStart = Scratch(start.Length, DType.I32);
        using var tSeg = Scratch(segIds.Length, DType.I32);
        Upload(tPerm, perm);
        Upload(tStart, start);
        Upload(tSeg, segIds);
        var args = new EmbeddingArgs { N = (uint)segIds.Length, D = (uint)d, V = (uint)v };
        Launch("embedding_back", [ElementwiseWg],
            [Read(tPerm, "ids permutation"), Read(tStart, "segment starts"), Read(tSeg, "segment ids"), Read(vdy, "dy"), ReadWrite(vt, "dtable")],
            args, Math.Min(Ceil((long)segIds.Length * d, ElementwiseWg), 4096u));
    }
}
