// Device memory of the Vulkan backend: VkBuffers sub-allocated from large VkDeviceMemory blocks (first fit
// with coalescing), because drivers cap the number of allocations (maxMemoryAllocationCount, often 4096) and
// vkAllocateMemory is slow. Two layouts (docs/kernels.md §5):
// - unified: a device-local, host-visible, coherent type whose heap is the main device heap (lavapipe,
//   integrated GPUs, resizable BAR): tensors are mapped and the host copies directly when the queue is idle;
// - split heaps (discrete GPUs): tensors live in device-local memory, transfers go through host-visible
//   staging buffers and vkCmdCopyBuffer.
// Limits respected: maxMemoryAllocationSize (dedicated block above half a block), the buffer size, and the
// storage-buffer range is enforced where buffers are bound (CommandRecorder).
using Silk.NET.Vulkan;
using VkBuffer = Silk.NET.Vulkan.Buffer;

namespace TaylorCalibrate.Backend.Vulkan;

/// <summary>One VkBuffer bound to a sub-range of a memory block; <see cref="Mapped"/> is null unless host-visible.</summary>
internal sealed unsafe class DeviceBuffer
{
    public VkBuffer Handle;
    /// <summary>Bytes usable by the caller.</summary>
    public ulong Size;
    public MemoryBlock Block = null!;
    public ulong BlockOffset, BlockBytes;
    public byte* Mapped;
}

/// <summary>A VkDeviceMemory allocation carved into buffers.</summary>
internal sealed unsafe class MemoryBlock
{
    public DeviceMemory Memory;
    public ulong Size;
    public byte* Mapped;
    public bool Dedicated;
    /// <summary>Free ranges keyed by offset (kept coalesced).</summary>
    public readonly SortedList<ulong, ulong> Free = new();
    public ulong Used;

    public bool TryCarve(ulong size, ulong alignment, out ulong offset)
    {
        foreach (var (start, len) in Free)
        {
            ulong aligned = (start + alignment - 1) / alignment * alignment;
            if (aligned + size > start + len) continue;
            Free.Remove(start);
            if (aligned > start) Free.Add(start, aligned - start);
            if (aligned + size < start + len) Free.Add(aligned + size, start + len - aligned - size);
            offset = aligned;
            Used += size;
            return true;
        }
        offset = 0;
        return false;
    }

    public void Return(ulong offset, ulong size)
    {
        Used -= size;
        ulong start = offset, end = offset + size;
        int i = 0;
        // merge with the neighbours on either side
        while (i < Free.Count)
        {
            ulong s = Free.Keys[i], e = s + Free.Values[i];
            if (e == start || s == end)
            {
                start = Math.Min(start, s);
                end = Math.Max(end, e);
                Free.RemoveAt(i);
                continue;
            }
            if (s > end) break;
            i++;
        }
        Free.Add(start, end - start);
    }
}

/// <summary>Buffers of one memory type, sub-allocated from blocks.</summary>
internal sealed unsafe class MemoryPool : IDisposable
{
    readonly VulkanContext ctx;
    readonly uint typeIndex;
    readonly bool map;
    readonly ulong blockSize;
    readonly string what;
    readonly List<MemoryBlock> blocks = new();
    readonly HashSet<DeviceBuffer> live = new();   // destroyed on Dispose: tensors the caller never disposed

    public MemoryPool(VulkanContext ctx, uint typeIndex, bool map, ulong blockSize, string what)
    {
        this.ctx = ctx;
        this.typeIndex = typeIndex;
        this.map = map;
        this.blockSize = blockSize;
        this.what = what;
    }

    /// <summary>Bytes currently handed out.</summary>
    public ulong Used => (ulong)blocks.Sum(b => (long)b.Used);

    /// <summary>A buffer of at least <paramref name="size"/> bytes (storage + transfer usage).</summary>
    /// <exception cref="ArgumentException">The size exceeds the device's allocation or buffer limit.</exception>
    public DeviceBuffer Create(ulong size)
    {
        size = Math.Max(16, (size + 15) & ~15UL);
        if (size > ctx.MaxAllocationSize || size > ctx.MaxBufferSize)
            throw new ArgumentException($"a tensor of {size >> 20} MiB exceeds the device's largest allocation ({ctx.MaxAllocationSize >> 20} MiB)");
        var vk = ctx.Vk;
        var info = new BufferCreateInfo
        {
            SType = StructureType.BufferCreateInfo, Size = size, SharingMode = SharingMode.Exclusive,
            Usage = BufferUsageFlags.StorageBufferBit | BufferUsageFlags.TransferSrcBit | BufferUsageFlags.TransferDstBit,
        };
        VulkanContext.Check(vk.CreateBuffer(ctx.Device, &info, null, out var handle), "vkCreateBuffer");
        vk.GetBufferMemoryRequirements(ctx.Device, handle, out var req);
        ulong align = Math.Max(Math.Max(req.Alignment, ctx.MinStorageBufferOffsetAlignment), 16);   // 16: vec4 loads
        MemoryBlock? block = null;
        ulong offset = 0;
        if (req.Size <= blockSize / 2)
        {
            foreach (var b in blocks)
                if (!b.Dedicated && b.TryCarve(req.Size, align, out offset)) { block = b; break; }
            if (block is null)
            {
                block = Allocate(blockSize, dedicated: false);
                if (!block.TryCarve(req.Size, align, out offset)) throw new InvalidOperationException("fresh memory block too small");
            }
        }
        else
        {
            block = Allocate(req.Size, dedicated: true);
            block.Free.Clear();
            block.Used = req.Size;
        }
        var r = vk.BindBufferMemory(ctx.Device, handle, block.Memory, offset);
        if (r != Result.Success)
        {
            vk.DestroyBuffer(ctx.Device, handle, null);
            VulkanContext.Check(r, "vkBindBufferMemory");
        }
        var buffer = new DeviceBuffer
        {
            Handle = handle, Size = size, Block = block, BlockOffset = offset, BlockBytes = req.Size,
            Mapped = block.Mapped == null ? null : block.Mapped + offset,
        };
        live.Add(buffer);
        return buffer;
    }

    MemoryBlock Allocate(ulong size, bool dedicated)
    {
        var vk = ctx.Vk;
        var info = new MemoryAllocateInfo { SType = StructureType.MemoryAllocateInfo, AllocationSize = size, MemoryTypeIndex = typeIndex };
        var r = vk.AllocateMemory(ctx.Device, &info, null, out var memory);
        if (r is Result.ErrorOutOfDeviceMemory or Result.ErrorOutOfHostMemory)
        {
            // Give unused blocks back and retry once: fragmentation across blocks is the usual cause.
            Trim();
            r = vk.AllocateMemory(ctx.Device, &info, null, out memory);
        }
        VulkanContext.Check(r, "vkAllocateMemory", $"allocating {size >> 20} MiB of {what} memory ({Used >> 20} MiB in use)");
        var block = new MemoryBlock { Memory = memory, Size = size, Dedicated = dedicated };
        block.Free.Add(0, size);
        if (map)
        {
            void* p;
            VulkanContext.Check(vk.MapMemory(ctx.Device, memory, 0, Vk.WholeSize, 0, &p), "vkMapMemory");
            block.Mapped = (byte*)p;
        }
        blocks.Add(block);
        return block;
    }

    /// <summary>Destroys the buffer and returns its range (the caller guarantees the device no longer uses it).</summary>
    public void Free(DeviceBuffer b)
    {
        if (!live.Remove(b)) return;
        ctx.Vk.DestroyBuffer(ctx.Device, b.Handle, null);
        b.Block.Return(b.BlockOffset, b.BlockBytes);
        if (b.Block.Dedicated) Release(b.Block);
    }

    /// <summary>Frees every block that holds no buffer.</summary>
    public void Trim()
    {
        foreach (var b in blocks.Where(b => b.Used == 0).ToList()) Release(b);
    }

    void Release(MemoryBlock b)
    {
        if (b.Mapped != null) ctx.Vk.UnmapMemory(ctx.Device, b.Memory);
        ctx.Vk.FreeMemory(ctx.Device, b.Memory, null);
        blocks.Remove(b);
    }

    public void Dispose()
    {
        foreach (var b in live) ctx.Vk.DestroyBuffer(ctx.Device, b.Handle, null);
        live.Clear();
        foreach (var b in blocks.ToList()) Release(b);
    }
}

/// <summary>The backend's memory: the tensor pool and the staging pool, and which layout the device has.</summary>
internal sealed unsafe class VulkanMemory : IDisposable
{
    /// <summary>Tensors. Host-mapped when <see cref="Unified"/>.</summary>
    public readonly MemoryPool Device;
    /// <summary>Host-visible coherent staging buffers (uploads while the queue is busy; downloads on split heaps).</summary>
    public readonly MemoryPool Staging;
    /// <summary>Whether tensors are host-visible (no staging needed when the queue is idle).</summary>
    public readonly bool Unified;

    public VulkanMemory(VulkanContext ctx)
    {
        var vk = ctx.Vk;
        // Probe which memory types a storage buffer may live in.
        var info = new BufferCreateInfo
        {
            SType = StructureType.BufferCreateInfo, Size = 256, SharingMode = SharingMode.Exclusive,
            Usage = BufferUsageFlags.StorageBufferBit | BufferUsageFlags.TransferSrcBit | BufferUsageFlags.TransferDstBit,
        };
        VulkanContext.Check(vk.CreateBuffer(ctx.Device, &info, null, out var probe), "vkCreateBuffer");
        vk.GetBufferMemoryRequirements(ctx.Device, probe, out var req);
        vk.DestroyBuffer(ctx.Device, probe, null);

        var mp = ctx.MemoryProperties;
        ulong largestLocal = 0;
        for (int i = 0; i < mp.MemoryHeapCount; i++)
            if ((mp.MemoryHeaps[i].Flags & MemoryHeapFlags.DeviceLocalBit) != 0) largestLocal = Math.Max(largestLocal, mp.MemoryHeaps[i].Size);

        int Find(MemoryPropertyFlags want, Func<MemoryType, bool>? extra = null)
        {
            for (int i = 0; i < mp.MemoryTypeCount; i++)
            {
                var t = mp.MemoryTypes[i];
                if ((req.MemoryTypeBits & (1u << i)) != 0 && (t.PropertyFlags & want) == want && (extra is null || extra(t))) return i;
            }
            return -1;
        }
        const MemoryPropertyFlags hostCoherent = MemoryPropertyFlags.HostVisibleBit | MemoryPropertyFlags.HostCoherentBit;
        // Unified only when the host-visible device-local type sits on the main heap (not a 256 MiB BAR window).
        int unified = Find(MemoryPropertyFlags.DeviceLocalBit | hostCoherent, t => mp.MemoryHeaps[(int)t.HeapIndex].Size >= largestLocal);
        int local = Find(MemoryPropertyFlags.DeviceLocalBit);
        int staging = Find(hostCoherent | MemoryPropertyFlags.HostCachedBit);
        if (staging < 0) staging = Find(hostCoherent);
        if (staging < 0) throw new DeviceException("the Vulkan device has no host-visible coherent memory type");

        ulong block = Math.Min(256UL << 20, ctx.MaxAllocationSize);
        // TC_VULKAN_FORCE_STAGING=1 treats the device like a discrete GPU (unmapped tensors, staging copies),
        // so the split-heap paths can be tested on lavapipe's unified memory.
        bool forceStaging = Environment.GetEnvironmentVariable("TC_VULKAN_FORCE_STAGING") == "1";
        if (forceStaging && local < 0) local = unified;
        Unified = unified >= 0 && !forceStaging;
        Device = Unified
            ? new MemoryPool(ctx, (uint)unified, map: true, block, "device")
            : new MemoryPool(ctx, (uint)(local >= 0 ? local : staging), map: local < 0, block, "device");
        Staging = new MemoryPool(ctx, (uint)(Unified ? unified : staging), map: true, Math.Min(64UL << 20, block), "staging");
    }

    public void Dispose()
    {
        Device.Dispose();
        Staging.Dispose();
    }
}
