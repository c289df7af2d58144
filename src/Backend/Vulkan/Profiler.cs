// Device-side timing for `taylor-calibrate bench` (docs/kernels.md §5, Profiling): timestamp queries converted to
// seconds with timestampPeriod (ns per tick), masked to timestampValidBits. Two modes: the span of
// everything an action queues, and per-dispatch intervals. Per-dispatch intervals overlap when the driver
// runs independent dispatches concurrently (no barrier between them); sum them only for serial work.
using Silk.NET.Vulkan;

namespace TaylorCalibrate.Backend.Vulkan;

/// <summary>One timed dispatch: the kernel (shader and specialization) and its device time.</summary>
public readonly record struct DispatchTiming(string Kernel, double Seconds);

/// <summary>Timestamp queries of one device.</summary>
internal sealed unsafe class Profiler : IDisposable
{
    const uint Capacity = 4096;          // queries: 2 per dispatch
    readonly VulkanContext ctx;
    readonly QueryPool pool;
    readonly List<string> names = new();
    uint next;

    public Profiler(VulkanContext ctx)
    {
        this.ctx = ctx;
        if (ctx.TimestampValidBits == 0) throw new InvalidOperationException($"{ctx.Info.Name} has no timestamp queries on its compute queue");
        var info = new QueryPoolCreateInfo { SType = StructureType.QueryPoolCreateInfo, QueryType = QueryType.Timestamp, QueryCount = Capacity };
        VulkanContext.Check(ctx.Vk.CreateQueryPool(ctx.Device, &info, null, out pool), "vkCreateQueryPool");
    }

    double Seconds(ulong t0, ulong t1)
    {
        ulong mask = ctx.TimestampValidBits >= 64 ? ulong.MaxValue : (1UL << (int)ctx.TimestampValidBits) - 1;
        return ((t1 - t0) & mask) * (double)ctx.Properties.Limits.TimestampPeriod * 1e-9;
    }

    ulong[] Read(uint count)
    {
        var data = new ulong[count];
        fixed (ulong* p = data)
            VulkanContext.Check(ctx.Vk.GetQueryPoolResults(ctx.Device, pool, 0, count, (nuint)(8 * count), p, 8,
                QueryResultFlags.Result64Bit | QueryResultFlags.ResultWaitBit), "vkGetQueryPoolResults");
        return data;
    }

    /// <summary>Device seconds from the first to the last command that <paramref name="action"/> queues.</summary>
    public double Measure(CommandRecorder rec, Action action)
    {
        rec.WaitIdle();
        rec.Raw(cmd =>
        {
            ctx.Vk.CmdResetQueryPool(cmd, pool, 0, 2);
            ctx.Vk.CmdWriteTimestamp(cmd, PipelineStageFlags.TopOfPipeBit, pool, 0);
        });
        action();
        rec.Raw(cmd => ctx.Vk.CmdWriteTimestamp(cmd, PipelineStageFlags.BottomOfPipeBit, pool, 1));
        rec.WaitIdle();
        var t = Read(2);
        return Seconds(t[0], t[1]);
    }

    /// <summary>Each dispatch that <paramref name="action"/> queues, timed (the first 2048).</summary>
    public IReadOnlyList<DispatchTiming> PerDispatch(CommandRecorder rec, Action action)
    {
        rec.WaitIdle();
        rec.Raw(cmd => ctx.Vk.CmdResetQueryPool(cmd, pool, 0, Capacity));
        names.Clear();
        next = 0;
        rec.DispatchProfiler = this;
        try { action(); rec.WaitIdle(); }
        finally { rec.DispatchProfiler = null; }
        if (next == 0) return [];
        var t = Read(next);
        var result = new List<DispatchTiming>(names.Count);
        for (int i = 0; i < names.Count; i++) result.Add(new DispatchTiming(names[i], Seconds(t[2 * i], t[2 * i + 1])));
        return result;
    }

    internal void Before(CommandBuffer cmd, string name)
    {
        if (next + 2 > Capacity) return;
        names.Add(name);
        ctx.Vk.CmdWriteTimestamp(cmd, PipelineStageFlags.TopOfPipeBit, pool, next++);
    }

    internal void After(CommandBuffer cmd)
    {
        if ((next & 1) == 0) return;      // Before skipped (capacity reached)
        ctx.Vk.CmdWriteTimestamp(cmd, PipelineStageFlags.BottomOfPipeBit, pool, next++);
    }

    public void Dispose() => ctx.Vk.DestroyQueryPool(ctx.Device, pool, null);
}
