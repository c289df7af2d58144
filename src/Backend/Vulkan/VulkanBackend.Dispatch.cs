// The internal kernel-launch API every op family uses, attention and GDN included:
//   var p = new MyArgs { ... };                           // push constants: a Sequential struct ≤ 128 B,
//                                                          // twin of the GLSL `layout(push_constant)` block
//   Launch("myshader", [spec0, spec1], [Read(x, "x"), Write(y, "y")], p, groupsX, groupsY, groupsZ);
// Binding i of the shader is element i of the span (the shared layout has Pipelines.MaxBindings storage
// buffers; unused ones get a dummy). Read/Write/ReadWrite declare the access for hazard tracking — declare
// a binding written whenever the kernel may write it, or barriers will be missing. A binding may cover at
// most maxStorageBufferRange bytes; Bind throws an ArgumentException naming the tensor otherwise, and
// ForEachChunk splits elementwise work into bound ranges.
using System.Runtime.InteropServices;

namespace TaylorCalibrate.Backend.Vulkan;

public sealed unsafe partial class VulkanBackend
{
    /// <summary>Workgroups along x per dispatch row; the grid wraps into y beyond it (guaranteed minimum 65535).</summary>
    internal const uint GridRow = 65535;

    /// <summary>A binding of elements [first, first+count) of <paramref name="t"/> (all when count &lt; 0).</summary>
    /// <exception cref="ArgumentException">The range exceeds the per-binding limit (maxStorageBufferRange).</exception>
    internal Binding Bind(VulkanTensor t, string name, bool write, long first = 0, long count = -1)
    {
        if (count < 0) count = t.Count - first;
        if (write) t.KnownIdRange = null;
        ulong offset = 4UL * (ulong)first, size = Math.Max(4UL, 4UL * (ulong)count);
        if (size > BindingLimit)
            throw new ArgumentException($"tensor '{name}' {t.ShapeText} needs a {size >> 20} MiB binding, more than the device binds at once "
                                        + $"({BindingLimit >> 20} MiB, maxStorageBufferRange); split the op into smaller batches");
        if (offset % ctx.MinStorageBufferOffsetAlignment != 0)
            throw new InvalidOperationException($"binding of '{name}' at byte {offset} is not aligned to {ctx.MinStorageBufferOffsetAlignment}");
        if (offset + size > t.Buffer.Size) size = t.Buffer.Size - offset;
        return new Binding(t.Buffer, offset, size, write);
    }

    internal Binding Read(VulkanTensor t, string name) => Bind(t, name, false);
    internal Binding Write(VulkanTensor t, string name) => Bind(t, name, true);
    internal Binding ReadWrite(VulkanTensor t, string name) => Bind(t, name, true);

    /// <summary>Records a dispatch of <paramref name="shader"/> (embedded <c>spv.&lt;shader&gt;.spv</c>) specialised
    /// with constant_id i = spec[i], with <paramref name="push"/> as push constants.</summary>
    internal void Launch<TPush>(string shader, ReadOnlySpan<uint> spec, ReadOnlySpan<Binding> bindings, in TPush push, uint x, uint y = 1, uint z = 1)
        where TPush : unmanaged
    {
        lock (gate)
        {
            ObjectDisposedException.ThrowIf(disposed, this);
            var p = pipes.Get(shader, spec);
            rec.Dispatch(p, bindings, MemoryMarshal.AsBytes(new ReadOnlySpan<TPush>(in push)), x, y, z);
        }
    }

    /// <summary>Splits <paramref name="groups"/> workgroups into an x×y grid with x ≤ GridRow. Kernels
    /// recover the linear index with <c>groupIndex()</c> (common.glsl) and must bounds-check it.</summary>
    internal static (uint X, uint Y) Grid(long groups)
    {
        if (groups <= 0) return (0, 0);
        if (groups <= GridRow) return ((uint)groups, 1);
        return (GridRow, (uint)((groups + GridRow - 1) / GridRow));
    }

    /// <summary>Elements per bound chunk for elementwise work: the binding limit, rounded down to the
    /// storage-buffer offset alignment.</summary>
    internal long ChunkElements
    {
        get
        {
            ulong align = ctx.MinStorageBufferOffsetAlignment;
            ulong bytes = BindingLimit / align * align;
            return (long)(bytes / 4);
        }
    }

    /// <summary>Calls <paramref name="body"/>(first, count) for consecutive chunks covering [0, n) that each
    /// fit one binding (one call when n fits).</summary>
    internal void ForEachChunk(long n, Action<long, long> body)
    {
        long chunk = ChunkElements;
        for (long first = 0; first < n; first += chunk) body(first, Math.Min(chunk, n - first));
    }

    static uint Ceil(long a, long b) => checked((uint)((a + b - 1) / b));
}
