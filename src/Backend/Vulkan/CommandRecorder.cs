// Batched command recording (docs/kernels.md §5): ops are recorded into a command buffer and submitted in capped
// batches (a small first batch so the device starts early, then about BatchCap dispatches), up to MaxInFlight
// batches queued at once. A global memory barrier is inserted only on a hazard: a dispatch (or copy/fill)
// that reads a byte range written since the last barrier (RAW), writes one written (WAW) or read (WAR)
// since then. Barriers also order work across submissions, because a pipeline barrier's first scope holds
// every command earlier in submission order on the queue. Each command buffer ends with a barrier that makes
// device writes visible to the host, so a fence wait suffices before a mapped read.
using Silk.NET.Vulkan;
using VkBuffer = Silk.NET.Vulkan.Buffer;

namespace TaylorCalibrate.Backend.Vulkan;

/// <summary>One storage-buffer binding: a byte range of a buffer and whether the kernel writes it.</summary>
internal readonly record struct Binding(DeviceBuffer Buffer, ulong Offset, ulong Size, bool Write);

/// <summary>Records dispatches, copies and fills; submits them in batches; tracks hazards.</summary>
internal sealed unsafe class CommandRecorder : IDisposable
{
    /// <summary>Dispatches per submitted batch once the device is busy.</summary>
    public int BatchCap = 100;
    /// <summary>Dispatches in a batch submitted while the device is idle (it starts sooner).</summary>
    public int FirstBatchCap = 16;
    /// <summary>Batches queued on the device before the host waits for the oldest.</summary>
    public int MaxInFlight = 3;

    sealed class Batch
    {
        public CommandBuffer Cmd;
        public Fence Fence;
        public DescriptorPool Pool;
        public readonly List<Action> Releases = new();
        public int Dispatches, Commands, PoolSets;
        public Pipeline Bound;
    }

    readonly VulkanContext ctx;
    readonly Pipelines pipelines;
    readonly DeviceBuffer dummy;
    readonly CommandPool commandPool;
    readonly Queue<Batch> inFlight = new();
    readonly Stack<Batch> free = new();
    Batch? current;
    readonly List<(VkBuffer B, ulong Start, ulong End)> written = new(), read = new();

    /// <summary>Counters for tests and the bench: submitted batches, barriers, dispatches.</summary>
    public long Submits, Barriers, TotalDispatches;
    /// <summary>When set, every dispatch is bracketed by timestamps (see Profiler).</summary>
    internal Profiler? DispatchProfiler;

    public CommandRecorder(VulkanContext ctx, Pipelines pipelines, DeviceBuffer dummy)
    {
        this.ctx = ctx;
        this.pipelines = pipelines;
        this.dummy = dummy;
        var info = new CommandPoolCreateInfo
        {
            SType = StructureType.CommandPoolCreateInfo, QueueFamilyIndex = ctx.QueueFamily, Flags = CommandPoolCreateFlags.ResetCommandBufferBit,
        };
        VulkanContext.Check(ctx.Vk.CreateCommandPool(ctx.Device, &info, null, out commandPool), "vkCreateCommandPool");
    }

    /// <summary>True when nothing is recorded or executing: the host may touch mapped tensors directly.</summary>
    public bool Idle => (current is null || current.Commands == 0) && inFlight.Count == 0;

    /// <summary>The command buffer being recorded (begun on demand).</summary>
    public CommandBuffer Cmd => Begin().Cmd;

    Batch Begin()
    {
        if (current is not null) return current;
        var vk = ctx.Vk;
        var b = free.Count > 0 ? free.Pop() : NewBatch();
        VulkanContext.Check(vk.ResetDescriptorPool(ctx.Device, b.Pool, 0), "vkResetDescriptorPool");
        VulkanContext.Check(vk.ResetCommandBuffer(b.Cmd, 0), "vkResetCommandBuffer");
        var begin = new CommandBufferBeginInfo { SType = StructureType.CommandBufferBeginInfo, Flags = CommandBufferUsageFlags.OneTimeSubmitBit };
        VulkanContext.Check(vk.BeginCommandBuffer(b.Cmd, &begin), "vkBeginCommandBuffer");
        b.Dispatches = b.Commands = 0;
        b.Bound = default;
        current = b;
        return b;
    }

    Batch NewBatch()
    {
        var vk = ctx.Vk;
        var b = new Batch();
        var alloc = new CommandBufferAllocateInfo
        {
            SType = StructureType.CommandBufferAllocateInfo, CommandPool = commandPool, Level = CommandBufferLevel.Primary, CommandBufferCount = 1,
        };
        VulkanContext.Check(vk.AllocateCommandBuffers(ctx.Device, &alloc, out b.Cmd), "vkAllocateCommandBuffers");
        var fence = new FenceCreateInfo { SType = StructureType.FenceCreateInfo };
        VulkanContext.Check(vk.CreateFence(ctx.Device, &fence, null, out b.Fence), "vkCreateFence");
        b.PoolSets = Math.Max(BatchCap, FirstBatchCap) + 8;
        var size = new DescriptorPoolSize { Type = DescriptorType.StorageBuffer, DescriptorCount = (uint)(b.PoolSets * Pipelines.MaxBindings) };
        var pool = new DescriptorPoolCreateInfo { SType = StructureType.DescriptorPoolCreateInfo, MaxSets = (uint)b.PoolSets, PoolSizeCount = 1, PPoolSizes = &size };
        VulkanContext.Check(vk.CreateDescriptorPool(ctx.Device, &pool, null, out b.Pool), "vkCreateDescriptorPool");
        return b;
    }

    // ---- hazards ---------------------------------------------------------------------------------------

    static bool Overlaps(List<(VkBuffer B, ulong Start, ulong End)> list, in Binding r)
    {
        foreach (var (b, s, e) in list)
            if (b.Handle == r.Buffer.Handle.Handle && s < r.Offset + r.Size && r.Offset < e) return true;
        return false;
    }

    /// <summary>Inserts a barrier when any of the accesses conflicts with one since the last barrier, then records them.</summary>
    void Track(Batch batch, ReadOnlySpan<Binding> accesses)
    {
        bool hazard = false;
        foreach (ref readonly var a in accesses)
            if (Overlaps(written, a) || a.Write && Overlaps(read, a)) { hazard = true; break; }
        if (hazard)
        {
            var mb = new MemoryBarrier
            {
                SType = StructureType.MemoryBarrier,
                SrcAccessMask = AccessFlags.ShaderWriteBit | AccessFlags.TransferWriteBit | AccessFlags.ShaderReadBit | AccessFlags.TransferReadBit,
                DstAccessMask = AccessFlags.ShaderReadBit | AccessFlags.ShaderWriteBit | AccessFlags.TransferReadBit | AccessFlags.TransferWriteBit,
            };
            const PipelineStageFlags stages = PipelineStageFlags.ComputeShaderBit | PipelineStageFlags.TransferBit;
            ctx.Vk.CmdPipelineBarrier(batch.Cmd, stages, stages, 0, 1, &mb, 0, null, 0, null);
            written.Clear();
            read.Clear();
            Barriers++;
        }
        foreach (ref readonly var a in accesses)
            (a.Write ? written : read).Add((a.Buffer.Handle, a.Offset, a.Offset + a.Size));
    }

    // ---- commands --------------------------------------------------------------------------------------

    /// <summary>Records one dispatch of <paramref name="p"/> with the bindings (binding i = element i; the rest
    /// get a dummy buffer), push constants and a grid of workgroups.</summary>
    public void Dispatch(KernelPipeline p, ReadOnlySpan<Binding> bindings, ReadOnlySpan<byte> push, uint x, uint y = 1, uint z = 1)
    {
        if (bindings.Length > Pipelines.MaxBindings) throw new ArgumentException($"{p.Name}: {bindings.Length} bindings, at most {Pipelines.MaxBindings}");
        if (push.Length > Pipelines.MaxPushConstants) throw new ArgumentException($"{p.Name}: {push.Length} push-constant bytes, at most {Pipelines.MaxPushConstants}");
        if (x == 0 || y == 0 || z == 0) return;
        var lim = ctx.Properties.Limits;
        if (x > lim.MaxComputeWorkGroupCount[0] || y > lim.MaxComputeWorkGroupCount[1] || z > lim.MaxComputeWorkGroupCount[2])
            throw new ArgumentException($"{p.Name}: grid {x}×{y}×{z} exceeds the device's maximum {lim.MaxComputeWorkGroupCount[0]}×{lim.MaxComputeWorkGroupCount[1]}×{lim.MaxComputeWorkGroupCount[2]}");
        var batch = Begin();
        if (batch.Dispatches >= (inFlight.Count == 0 ? FirstBatchCap : BatchCap) || batch.Dispatches >= batch.PoolSets)
        {
            Flush();
            batch = Begin();
        }
        var vk = ctx.Vk;
        var layout = pipelines.SetLayout;
        var alloc = new DescriptorSetAllocateInfo { SType = StructureType.DescriptorSetAllocateInfo, DescriptorPool = batch.Pool, DescriptorSetCount = 1, PSetLayouts = &layout };
        DescriptorSet set;
        VulkanContext.Check(vk.AllocateDescriptorSets(ctx.Device, &alloc, &set), "vkAllocateDescriptorSets");
        var infos = stackalloc DescriptorBufferInfo[Pipelines.MaxBindings];
        var writes = stackalloc WriteDescriptorSet[Pipelines.MaxBindings];
        for (int i = 0; i < Pipelines.MaxBindings; i++)
        {
            infos[i] = i < bindings.Length
                ? new DescriptorBufferInfo { Buffer = bindings[i].Buffer.Handle, Offset = bindings[i].Offset, Range = Math.Max(4, bindings[i].Size) }
                : new DescriptorBufferInfo { Buffer = dummy.Handle, Offset = 0, Range = dummy.Size };
            writes[i] = new WriteDescriptorSet
            {
                SType = StructureType.WriteDescriptorSet, DstSet = set, DstBinding = (uint)i, DescriptorCount = 1,
                DescriptorType = DescriptorType.StorageBuffer, PBufferInfo = &infos[i],
            };
        }
        vk.UpdateDescriptorSets(ctx.Device, Pipelines.MaxBindings, writes, 0, null);
        Track(batch, bindings);
        if (batch.Bound.Handle != p.Handle.Handle)
        {
            vk.CmdBindPipeline(batch.Cmd, PipelineBindPoint.Compute, p.Handle);
            batch.Bound = p.Handle;
        }
        vk.CmdBindDescriptorSets(batch.Cmd, PipelineBindPoint.Compute, pipelines.Layout, 0, 1, &set, 0, null);
        if (push.Length > 0)
            fixed (byte* pc = push) vk.CmdPushConstants(batch.Cmd, pipelines.Layout, ShaderStageFlags.ComputeBit, 0, (uint)push.Length, pc);
        DispatchProfiler?.Before(batch.Cmd, p.Name);
        vk.CmdDispatch(batch.Cmd, x, y, z);
        DispatchProfiler?.After(batch.Cmd);
        batch.Dispatches++;
        batch.Commands++;
        TotalDispatches++;
    }

    /// <summary>Records dst[dstOffset..+size) = src[srcOffset..+size) (bytes).</summary>
    public void Copy(DeviceBuffer src, ulong srcOffset, DeviceBuffer dst, ulong dstOffset, ulong size)
    {
        if (size == 0) return;
        var batch = Begin();
        Span<Binding> acc = [new(src, srcOffset, size, false), new(dst, dstOffset, size, true)];
        Track(batch, acc);
        var region = new BufferCopy { SrcOffset = srcOffset, DstOffset = dstOffset, Size = size };
        ctx.Vk.CmdCopyBuffer(batch.Cmd, src.Handle, dst.Handle, 1, &region);
        batch.Commands++;
    }

    /// <summary>Records a fill of <paramref name="size"/> bytes (multiple of 4) with a 32-bit pattern.</summary>
    public void Fill(DeviceBuffer dst, ulong offset, ulong size, uint pattern)
    {
        if (size == 0) return;
        var batch = Begin();
        Span<Binding> acc = [new(dst, offset, size, true)];
        Track(batch, acc);
        ctx.Vk.CmdFillBuffer(batch.Cmd, dst.Handle, offset, size, pattern);
        batch.Commands++;
    }

    /// <summary>Records commands that touch no tensor (timestamps, query resets) into the current batch.</summary>
    public void Raw(Action<CommandBuffer> record)
    {
        var batch = Begin();
        record(batch.Cmd);
        batch.Commands++;
    }

    /// <summary>Runs <paramref name="release"/> once every command recorded so far has finished (now if idle).</summary>
    public void Defer(Action release)
    {
        if (current is not null && current.Commands > 0) current.Releases.Add(release);
        else if (inFlight.Count > 0) inFlight.Last().Releases.Add(release);
        else release();
    }

    /// <summary>Submits what is recorded; waits for the oldest batch when too many are queued.</summary>
    public void Flush()
    {
        var vk = ctx.Vk;
        var b = current;
        if (b is null) return;
        current = null;
        if (b.Commands == 0)
        {
            vk.EndCommandBuffer(b.Cmd);
            var pending = b.Releases.ToArray();
            b.Releases.Clear();
            free.Push(b);
            foreach (var r in pending) Defer(r);
            return;
        }
        // Make device writes available to the host (mapped reads after the fence).
        var mb = new MemoryBarrier
        {
            SType = StructureType.MemoryBarrier, SrcAccessMask = AccessFlags.ShaderWriteBit | AccessFlags.TransferWriteBit, DstAccessMask = AccessFlags.HostReadBit,
        };
        vk.CmdPipelineBarrier(b.Cmd, PipelineStageFlags.ComputeShaderBit | PipelineStageFlags.TransferBit, PipelineStageFlags.HostBit, 0, 1, &mb, 0, null, 0, null);
        VulkanContext.Check(vk.EndCommandBuffer(b.Cmd), "vkEndCommandBuffer");
        var cmd = b.Cmd;
        var submit = new SubmitInfo { SType = StructureType.SubmitInfo, CommandBufferCount = 1, PCommandBuffers = &cmd };
        VulkanContext.Check(vk.QueueSubmit(ctx.Queue, 1, &submit, b.Fence), "vkQueueSubmit");
        inFlight.Enqueue(b);
        Submits++;
        // Retire what has finished (frees deferred memory early); bound the queue depth.
        while (inFlight.Count > 0 && vk.GetFenceStatus(ctx.Device, inFlight.Peek().Fence) == Result.Success) Retire();
        while (inFlight.Count > MaxInFlight) Retire();
    }

    void Retire()
    {
        var vk = ctx.Vk;
        var b = inFlight.Dequeue();
        var fence = b.Fence;
        VulkanContext.Check(vk.WaitForFences(ctx.Device, 1, &fence, true, ulong.MaxValue), "vkWaitForFences");
        VulkanContext.Check(vk.ResetFences(ctx.Device, 1, &fence), "vkResetFences");
        foreach (var r in b.Releases) r();
        b.Releases.Clear();
        free.Push(b);
    }

    /// <summary>Submits everything and waits until the device has finished it.</summary>
    public void WaitIdle()
    {
        Flush();
        while (inFlight.Count > 0) Retire();
        // Everything before is complete and visible: no hazard can remain.
        written.Clear();
        read.Clear();
    }

    public void Dispose()
    {
        WaitIdle();
        var vk = ctx.Vk;
        foreach (var b in free)
        {
            vk.DestroyFence(ctx.Device, b.Fence, null);
            vk.DestroyDescriptorPool(ctx.Device, b.Pool, null);
        }
        vk.DestroyCommandPool(ctx.Device, commandPool, null);
    }
}
