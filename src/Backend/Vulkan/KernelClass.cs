// Which shape of kernel a Vulkan device gets (docs/kernels.md, "Vulkan organisation" and "Mesa lavapipe"):
// CPU-type drivers (lavapipe, SwiftShader) scalarise shared-memory loads and pay dearly for barriers, so
// their variants keep operands in registers and rely on the CPU cache; GPUs get shared-memory tiles and a
// finer work split. The class is read from the device type and can be forced with the environment variable
// TC_VULKAN_KERNELS=gpu|cpu — `gpu` on lavapipe is how the tests exercise the GPU variants on a CPU.
using Silk.NET.Vulkan;

namespace TaylorCalibrate.Backend.Vulkan;

/// <summary>The kernel variants a device uses.</summary>
internal enum KernelClass
{
    /// <summary>Register-resident variants without shared-memory tiles (CPU-type drivers).</summary>
    CpuDriver,
    /// <summary>Shared-memory tiles and a work split over (batch, head, block) (discrete/integrated GPUs).</summary>
    Gpu,
}

/// <summary>Per-device tuning of the attention and chunked-GDN kernels, passed to them as specialization
/// constants. Derived once per device from its type, vendor and limits.</summary>
/// <param name="Class">The kernel variants in use.</param>
/// <param name="Vendor">PCI vendor id (0x10de NVIDIA, 0x1002 AMD, 0x8086 Intel, 0x10005 Mesa).</param>
/// <param name="AttentionRows">Query (or key) rows per workgroup of the attention kernels.</param>
/// <param name="GdnScanColumns">Value columns per workgroup of the inter-chunk state scans: fewer columns
/// give more workgroups, which a GPU needs at H·V/columns ≈ a few hundred.</param>
/// <param name="GdnRowSweep">How gdn_chunk_wy solves A = (I + L)⁻¹ (specialization constant ROW_SWEEP): a
/// sweep over the rows of the shared tile with a barrier pair per row (GPUs: a per-invocation array of BT
/// floats would spill to local memory), or a per-column solve in registers without barriers (CPU drivers).</param>
internal sealed record KernelTuning(KernelClass Class, uint Vendor, uint AttentionRows, uint GdnScanColumns, bool GdnRowSweep)
{
    public const uint VendorNvidia = 0x10de, VendorAmd = 0x1002, VendorIntel = 0x8086;

    /// <summary>The tuning of a device: its class from the device type unless TC_VULKAN_KERNELS forces one.</summary>
    /// <exception cref="DeviceException">TC_VULKAN_KERNELS holds something other than gpu or cpu.</exception>
    public static KernelTuning For(PhysicalDeviceType type, uint vendor, uint subgroupSize)
    {
        var forced = Environment.GetEnvironmentVariable("TC_VULKAN_KERNELS");
        var cls = forced switch
        {
            null or "" => type == PhysicalDeviceType.Cpu ? KernelClass.CpuDriver : KernelClass.Gpu,
            "gpu" => KernelClass.Gpu,
            "cpu" => KernelClass.CpuDriver,
            _ => throw new DeviceException($"TC_VULKAN_KERNELS={forced}: expected gpu or cpu"),
        };
        if (cls == KernelClass.CpuDriver) return new KernelTuning(cls, vendor, 32, 64, false);
        // One subgroup-multiple of rows per workgroup (NVIDIA 32, AMD 64, Intel 8–32); scans narrow enough
        // that B·H·V/columns workgroups fill the device at H = 16, V = 128.
        uint rows = Math.Clamp(subgroupSize, 32u, 64u);
        uint columns = vendor == VendorAmd ? 64u : 32u;
        return new KernelTuning(cls, vendor, rows, columns, true);
    }
}
