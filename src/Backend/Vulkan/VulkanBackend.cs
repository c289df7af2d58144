// The Vulkan implementation of IBackend (contract: ../IBackend.cs; maths: docs/kernels.md). This file holds the
// device objects and the memory ops; the op families live in VulkanBackend.<Family>.cs, the generic
// binding/dispatch helpers in VulkanBackend.Dispatch.cs. Ops are recorded, not run: they execute in order
// on one queue, and Download/Synchronize wait for them (CommandRecorder.cs).
using System.Runtime.InteropServices;

namespace TaylorCalibrate.Backend.Vulkan;

/// <summary>GLSL compute kernels on one Vulkan device. Calls are serialised internally (one lock around
/// recording, memory and transfers), so concurrent callers are safe at op granularity; ops from different
/// threads on distinct tensors interleave correctly because hazards are tracked per dispatch.</summary>
public sealed unsafe partial class VulkanBackend : IBackend
{
    readonly int index;
    readonly VulkanContext ctx;
    readonly VulkanMemory mem;
    readonly Pipelines pipes;
    readonly CommandRecorder rec;
    readonly DeviceBuffer dummy;
    Profiler? profiler;
    bool disposed;
    /// <summary>Serialises recording, allocation and transfers (Monitor, so re-entrant).</summary>
    readonly object gate = new();

    /// <summary>Opens Vulkan device <paramref name="index"/> (see <see cref="VulkanDevices.Enumerate"/>).</summary>
    /// <exception cref="DeviceException">No loader, no such device, or the device lacks Vulkan 1.2.</exception>
    public VulkanBackend(int index)
    {
        this.index = index;
        ctx = new VulkanContext(index);
        try
        {
            mem = new VulkanMemory(ctx);
            pipes = new Pipelines(ctx);
            dummy = mem.Device.Create(16);
            rec = new CommandRecorder(ctx, pipes, dummy);
            Tuning = KernelTuning.For(ctx.Properties.DeviceType, ctx.Properties.VendorID, ctx.SubgroupSize);
            GemmVariant = ChooseGemm(Tuning);
        }
        catch
        {
            rec?.Dispose();
            pipes?.Dispose();
            mem?.Dispose();
            ctx.Dispose();
            throw;
        }
    }

    /// <inheritdoc />
    public string Name => $"vulkan:{index}";
    /// <inheritdoc />
    public DeviceInfo Info => ctx.Info;

    internal VulkanContext Context => ctx;

    /// <summary>The attention and chunked-GDN kernel variants and their tile sizes (KernelClass.cs); settable
    /// for tests of the GPU variants on lavapipe.</summary>
    internal KernelTuning Tuning { get; set; }
    internal CommandRecorder Recorder => rec;

    /// <summary>Largest byte range one kernel binding may cover: maxStorageBufferRange, or less for tests of
    /// the split paths.</summary>
    internal ulong MaxBindingBytes { get; set; } = 0;
    ulong BindingLimit => MaxBindingBytes != 0 ? Math.Min(MaxBindingBytes, ctx.MaxStorageBufferRange) : ctx.MaxStorageBufferRange;

    // ---- memory ----------------------------------------------------------------------------------------

    /// <inheritdoc />
    public Tensor Allocate(int[] shape, DType dtype = DType.F32)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        ArgumentNullException.ThrowIfNull(shape);
        long n = 1;
        foreach (var d in shape) n *= Math.Max(d, 0);
        lock (gate)
        {
            var buffer = mem.Device.Create(4UL * (ulong)n);
            var t = new VulkanTensor(this, shape, dtype, buffer);
            if (buffer.Mapped != null && rec.Idle) NativeMemory.Clear(buffer.Mapped, (nuint)buffer.Size);
            else rec.Fill(buffer, 0, buffer.Size, 0);
            return t;
        }
    }

    internal void ReleaseBuffer(DeviceBuffer b)
    {
        lock (gate)
        {
            if (disposed) return;
            rec.Defer(() => mem.Device.Free(b));
        }
    }

    /// <summary>The Vulkan tensor behind <paramref name="t"/>, checking ownership, dtype and liveness.</summary>
    internal VulkanTensor Own(Tensor t, string name, DType dtype)
    {
        ArgumentNullException.ThrowIfNull(t, name);
        if (t is not VulkanTensor v || !ReferenceEquals(v.Backend, this))
            throw new ArgumentException($"tensor '{name}' belongs to backend {t.Backend.Name}, not {Name}");
        if (v.IsDisposed) throw new ObjectDisposedException($"tensor '{name}'");
        if (v.DType != dtype) throw new ArgumentException($"tensor '{name}' is {v.DType}, expected {dtype}");
        return v;
    }

    internal VulkanTensor F32(Tensor t, string name) => Own(t, name, DType.F32);
    internal VulkanTensor I32(Tensor t, string name) => Own(t, name, DType.I32);

    /// <inheritdoc />
    public void Upload(Tensor t, ReadOnlySpan<float> data)
    {
        var v = F32(t, "upload target");
        if (data.Length != v.Count) throw new ArgumentException($"upload of {data.Length} values into tensor {v.ShapeText} ({v.Count} elements)");
        fixed (float* p = data) UploadBytes(v, (byte*)p);
    }

    /// <inheritdoc />
    public void Upload(Tensor t, ReadOnlySpan<int> data)
    {
        var v = I32(t, "upload target");
        if (data.Length != v.Count) throw new ArgumentException($"upload of {data.Length} ids into tensor {v.ShapeText} ({v.Count} elements)");
        fixed (int* p = data) UploadBytes(v, (byte*)p);
        v.KnownIdRange = RangeOf(data);
    }

    static (int Min, int Max) RangeOf(ReadOnlySpan<int> ids)
    {
        int min = int.MaxValue, max = int.MinValue;
        foreach (var id in ids) { min = Math.Min(min, id); max = Math.Max(max, id); }
        return (min, max);
    }

    /// <summary>
    /// Throws, before any work of the calling op is queued, if an id of <paramref name="ids"/> lies outside
    /// [0, <paramref name="hi"/>) (negative ids pass when <paramref name="negativeOk"/>).
    /// Uses the host-known range when there is one, else downloads the ids (a synchronisation point).
    /// </summary>
    internal void CheckIds(VulkanTensor ids, string name, int hi, bool negativeOk, string against)
    {
        if (ids.Count == 0) return;
        if (ids.KnownIdRange is not { } r)
        {
            var host = new int[ids.Count];
            Download(ids, host);
            r = RangeOf(host);
            ids.KnownIdRange = r;
        }
        if ((negativeOk || r.Min >= 0) && r.Max < hi) return;
        var all = new int[ids.Count];
        Download(ids, all);
        int at = Array.FindIndex(all, id => id >= hi || (!negativeOk && id < 0));
        string range = negativeOk ? $"below {hi} (negative = ignored)" : $"in [0,{hi})";
        throw new ArgumentException($"tensor '{name}' {ids.ShapeText} holds {all[at]} at position {at}, expected ids {range} of {against}");
    }

    void UploadBytes(VulkanTensor t, byte* src)
    {
        lock (gate) UploadLocked(t, src);
    }

    void UploadLocked(VulkanTensor t, byte* src)
    {
        ulong bytes = t.Bytes;
        if (bytes == 0) return;
        if (t.Buffer.Mapped != null && rec.Idle)
        {
            System.Buffer.MemoryCopy(src, t.Buffer.Mapped, bytes, bytes);
            return;
        }
        // Queued work may still read the old contents: stage the data and copy in queue order.
        var s = mem.Staging.Create(bytes);
        System.Buffer.MemoryCopy(src, s.Mapped, bytes, bytes);
        rec.Copy(s, 0, t.Buffer, 0, bytes);
        rec.Defer(() => mem.Staging.Free(s));
    }

    /// <inheritdoc />
    public void Download(Tensor t, Span<float> data)
    {
        var v = F32(t, "download source");
        if (data.Length != v.Count) throw new ArgumentException($"download of tensor {v.ShapeText} ({v.Count} elements) into {data.Length} values");
        fixed (float* p = data) DownloadBytes(v, (byte*)p);
    }

    /// <inheritdoc />
    public void Download(Tensor t, Span<int> data)
    {
        var v = I32(t, "download source");
        if (data.Length != v.Count) throw new ArgumentException($"download of tensor {v.ShapeText} ({v.Count} elements) into {data.Length} ids");
        fixed (int* p = data) DownloadBytes(v, (byte*)p);
    }

    void DownloadBytes(VulkanTensor t, byte* dst)
    {
        lock (gate) DownloadLocked(t, dst);
    }

    void DownloadLocked(VulkanTensor t, byte* dst)
    {
        ulong bytes = t.Bytes;
        if (t.Buffer.Mapped != null)
        {
            rec.WaitIdle();
            if (bytes > 0) System.Buffer.MemoryCopy(t.Buffer.Mapped, dst, bytes, bytes);
            return;
        }
        if (bytes == 0) { rec.WaitIdle(); return; }
        var s = mem.Staging.Create(bytes);
        try
        {
            rec.Copy(t.Buffer, 0, s, 0, bytes);
            rec.WaitIdle();
            System.Buffer.MemoryCopy(s.Mapped, dst, bytes, bytes);
        }
        finally { rec.Defer(() => mem.Staging.Free(s)); }
    }

    /// <inheritdoc />
    public void Synchronize()
    {
        lock (gate) rec.WaitIdle();
    }

    /// <inheritdoc />
    public void Copy(Tensor src, long srcOffset, Tensor dst, long dstOffset, long count)
    {
        ArgumentNullException.ThrowIfNull(src);
        var s = Own(src, "src", src.DType);
        var d = Own(dst, "dst", dst.DType);
        if (s.DType != d.DType) throw new ArgumentException($"copy from {s.DType} tensor 'src' to {d.DType} tensor 'dst'");
        d.KnownIdRange = null;
        if (srcOffset < 0 || dstOffset < 0 || count < 0 || srcOffset + count > s.Count || dstOffset + count > d.Count)
            throw new ArgumentException($"copy of {count} elements from 'src' {s.ShapeText} at {srcOffset} to 'dst' {d.ShapeText} at {dstOffset} is out of range");
        if (count == 0) return;
        lock (gate) CopyLocked(s, d, srcOffset, dstOffset, count);
    }

    void CopyLocked(VulkanTensor s, VulkanTensor d, long srcOffset, long dstOffset, long count)
    {
        ulong so = 4UL * (ulong)srcOffset, dO = 4UL * (ulong)dstOffset, n = 4UL * (ulong)count;
        if (ReferenceEquals(s, d) && so < dO + n && dO < so + n)
        {
            // vkCmdCopyBuffer forbids overlapping regions: go through a temporary.
            var tmp = mem.Device.Create(n);
            rec.Copy(s.Buffer, so, tmp, 0, n);
            rec.Copy(tmp, 0, d.Buffer, dO, n);
            rec.Defer(() => mem.Device.Free(tmp));
            return;
        }
        rec.Copy(s.Buffer, so, d.Buffer, dO, n);
    }

    /// <inheritdoc />
    public void Fill(Tensor t, float value)
    {
        var v = F32(t, "t");
        lock (gate) rec.Fill(v.Buffer, 0, v.Bytes, BitConverter.SingleToUInt32Bits(value));
    }

    // ---- profiling -------------------------------------------------------------------------------------

    Profiler Prof => profiler ??= new Profiler(ctx);

    /// <summary>Device seconds (timestamp queries) from the first to the last command <paramref name="action"/>
    /// queues. Waits for earlier work first, and for the action's work before returning.</summary>
    /// <exception cref="InvalidOperationException">The device has no timestamps on its compute queue.</exception>
    public double Profile(Action action)
    {
        lock (gate) return Prof.Measure(rec, action);
    }

    /// <summary>Device seconds of each dispatch <paramref name="action"/> queues (the first 2048), by kernel
    /// name (shader:specialization). Independent dispatches may overlap on the device.</summary>
    public IReadOnlyList<DispatchTiming> ProfileDispatches(Action action)
    {
        lock (gate) return Prof.PerDispatch(rec, action);
    }

    /// <inheritdoc />
    public void Dispose()
    {
        lock (gate) DisposeLocked();
    }

    void DisposeLocked()
    {
        if (disposed) return;
        try { rec.WaitIdle(); }
        finally
        {
            disposed = true;
            rec.Dispose();
            profiler?.Dispose();
            pipes.Dispose();
            mem.Dispose();
            ctx.Dispose();
        }
    }
}
