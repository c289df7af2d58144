// Causal GQA softmax attention on the Vulkan backend (contract: IBackend.AttentionForward/Backward; maths:
// docs/kernels.md §2; CPU twin: Cpu/Attention). Kernels: attention.comp (flash forward, one invocation per query
// row, optional per-row statistics), attention_stats.comp (fixed-order per-head means), attention_probs.comp
// (diagnostic probabilities), attention_back.comp (δ, dK/dV, dQ passes, no float atomics).
// GPU variants (KernelClass.Gpu, see KernelClass.cs): attention_tiled.comp and attention_back_tiled.comp
// (dK/dV, dQ) keep the key/value (or query/dO) tiles in shared memory, one workgroup per (batch, head,
// block of rows); δ still comes from attention_back.comp's PASS 0. Both variants give the same results up
// to fp32 rounding (the same sums in the same order).
using System.Runtime.InteropServices;

namespace TaylorCalibrate.Backend.Vulkan;

/// <summary>Push constants of the attention kernels (= GLSL Args in attention_common.glsl).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct AttentionArgs
{
    public uint B, T, H, Hkv;
    public float Scale;
    /// <summary>Bit 0: attention.comp writes the per-row statistics.</summary>
    public uint Flags;
}

public sealed partial class VulkanBackend
{
    /// <summary>Query (or key) rows per workgroup of the attention kernels: one invocation per row.</summary>
    const uint AttentionRows = 32;
    /// <summary>Keys per online-softmax block of attention.comp (one rescale of the accumulator per block).</summary>
    const uint AttentionKeyBlock = 8;
    /// <summary>Chunk of the loops over D (DCHUNK in attention_common.glsl): one loop back-edge per chunk.</summary>
    const long AttentionDChunk = 16;
    /// <summary>Largest head size: the kernels keep up to four D-vectors per invocation in registers.</summary>
    public const int AttentionMaxHeadDim = 256;

    /// <inheritdoc />
    public void AttentionForward(Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, float scale, Tensor? stats = null, Tensor? probs = null)
    {
        var (B, T, H, Hkv, D) = SequenceShapes.Attention(q, k, v, AttentionMaxHeadDim);
        Check.Shape(o, "o", B, T, H, D);
        Check.Shape(lse, "lse", B, H, T);
        if (stats is not null) Check.Shape(stats, "stats", B, H, 2);
        if (probs is not null) Check.Shape(probs, "probs", B, H, T, T);
        bool tiled = Tuning.Class == KernelClass.Gpu;
        uint rows = tiled ? Tuning.AttentionRows : AttentionRows, tile = tiled ? AttentionTile(D, 0) : AttentionKeyBlock;
        // the last row visits every key block: 2 D-loops per key and one rescale per block (+ the tile loads)
        LoopBudget("AttentionForward", (long)T * (2 * Ceil(D, AttentionDChunk) + 2) + Ceil(T, tile) * (Ceil(D, AttentionDChunk) + (tiled ? Ceil((long)tile * D, rows) + 1 : 0)));
        var args = new AttentionArgs { B = (uint)B, T = (uint)T, H = (uint)H, Hkv = (uint)Hkv, Scale = scale, Flags = stats is null ? 0u : 1u };
        VulkanTensor vq = F32(q, "q"), vk = F32(k, "k"), vlse = F32(lse, "lse");
        // per-row (distance, entropy) when statistics are asked for; the dummy-sized lse binding otherwise
        VulkanTensor? rowStats = stats is null ? null : (VulkanTensor)Allocate([B, H, T, 2]);
        try
        {
            var (gx, gy) = Grid((long)B * H * Ceil(T, rows));
            Launch(tiled ? "attention_tiled" : "attention", [(uint)D, rows, tile],
                   [Read(vq, "q"), Read(vk, "k"), Read(F32(v, "v"), "v"), Write(F32(o, "o"), "o"), Write(vlse, "lse"),
                    rowStats is null ? Write(vlse, "lse") : Write(rowStats, "row statistics")],
                   args, gx, gy);
            if (rowStats is not null)
            {
                (gx, gy) = Grid((long)B * H);
                Launch("attention_stats", [(uint)D, 64u], [Read(rowStats, "row statistics"), Write(F32(stats!, "stats"), "stats")], args, gx, gy);
            }
            if (probs is not null)
            {
                (gx, gy) = Grid(Ceil((long)B * H * T * T, 64));
                Launch("attention_probs", [(uint)D, 64u], [Read(vq, "q"), Read(vk, "k"), Read(vlse, "lse"), Write(F32(probs, "probs"), "probs")], args, gx, gy);
            }
        }
        finally
        {
            rowStats?.Dispose();   // freed after the queued dispatches that use it (deferred release)
        }
    }

    /// <inheritdoc />
    public void AttentionBackward(Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, Tensor dO, Tensor dq, Tensor dk, Tensor dv, float scale)
    {
        var (B, T, H, Hkv, D) = SequenceShapes.Attention(q, k, v, AttentionMaxHeadDim);
        Check.Shape(o, "o", B, T, H, D);
        Check.Shape(lse, "lse", B, H, T);
        Check.Shape(dO, "dO", B, T, H, D);
        Check.Shape(dq, "dq", B, T, H, D);
        Check.Shape(dk, "dk", B, T, Hkv, D);
        Check.Shape(dv, "dv", B, T, Hkv, D);
        bool tiled = Tuning.Class == KernelClass.Gpu;
        uint rows = Tuning.AttentionRows, tile = tiled ? AttentionTile(D, 2) : 1;
        // the dK/dV invocation of key 0 visits every query row of every head of its group, 2 D-loops each
        // (+ per tile of the GPU variant: its loads)
        LoopBudget("AttentionBackward", (long)(H / Hkv) * (T * (2 * Ceil(D, AttentionDChunk) + 1) + (tiled ? Ceil(T, tile) * (Ceil((long)tile * D, rows) + 2) : 0))
                                        + 3 * Ceil(D, AttentionDChunk));
        var args = new AttentionArgs { B = (uint)B, T = (uint)T, H = (uint)H, Hkv = (uint)Hkv, Scale = scale };
        var delta = (VulkanTensor)Allocate([B, H, T]);   // δ_i = dO_i·O_i
        try
        {
            var common = new Binding[]
            {
                Read(F32(q, "q"), "q"), Read(F32(k, "k"), "k"), Read(F32(v, "v"), "v"), Read(F32(lse, "lse"), "lse"),
                Read(F32(dO, "dO"), "dO"),
            };
            var (gx, gy) = Grid(Ceil((long)B * H * T, AttentionRows));
            Launch("attention_back", [(uint)D, AttentionRows, 0u],
                   [.. common, Write(delta, "delta"), Read(F32(o, "o"), "o")], args, gx, gy);
            if (tiled)
            {
                // one workgroup per (b, kv head, key block), then per (b, head, query block)
                var (kx, ky) = Grid((long)B * Hkv * Ceil(T, rows));
                Launch("attention_back_tiled", [(uint)D, rows, 1u, tile],
                       [.. common, Read(delta, "delta"), Write(F32(dk, "dk"), "dk"), Write(F32(dv, "dv"), "dv")], args, kx, ky);
                var (qx, qy) = Grid((long)B * H * Ceil(T, rows));
                Launch("attention_back_tiled", [(uint)D, rows, 2u, tile],
                       [.. common, Read(delta, "delta"), Write(F32(dq, "dq"), "dq")], args, qx, qy);
            }
            else
            {
                var (kx, ky) = Grid(Ceil((long)B * Hkv * T, AttentionRows));
                Launch("attention_back", [(uint)D, AttentionRows, 1u],
                       [.. common, Read(delta, "delta"), Write(F32(dk, "dk"), "dk"), Write(F32(dv, "dv"), "dv")], args, kx, ky);
                Launch("attention_back", [(uint)D, AttentionRows, 2u],
                       [.. common, Read(delta, "delta"), Write(F32(dq, "dq"), "dq")], args, gx, gy);
            }
        }
        finally
        {
            delta.Dispose();
        }
    }

    /// <summary>Rows per shared tile of the GPU attention kernels: the largest power of two ≤ 64 whose two
    /// (rows × D) tiles plus <paramref name="perRow"/> floats per row fit the device's shared memory.</summary>
    uint AttentionTile(int D, uint perRow)
    {
        uint rows = 64;
        while (rows > 1 && 4UL * rows * (2UL * (ulong)D + perRow) > ctx.MaxSharedMemory) rows /= 2;
        return rows;
    }

    /// <summary>Back-edges of non-unrolled loops lavapipe lets one invocation take (gallivm's infinite-loop
    /// guard, LP_MAX_TGSI_LOOP_ITERATIONS): past it every loop silently exits, so results would be wrong.</summary>
    const long LavapipeLoopLimit = 65535;

    /// <summary>Rejects, on a CPU Vulkan device (lavapipe), work whose longest invocation would take more than
    /// <see cref="LavapipeLoopLimit"/> loop iterations; real GPUs have no such limit.</summary>
    /// <exception cref="NotSupportedException">The shape exceeds lavapipe's loop budget.</exception>
    void LoopBudget(string op, long iterations)
    {
        if (ctx.IsCpu && iterations >= LavapipeLoopLimit)
            throw new NotSupportedException($"{op}: this shape needs {iterations} loop iterations in one invocation; lavapipe stops every loop "
                                            + $"after {LavapipeLoopLimit} (its infinite-loop guard) and would return wrong results. Use a GPU or the CPU backend.");
    }

}
