// Vulkan device enumeration for `taylor-calibrate devices` and --device selection (src/Backend/Devices.cs).
// A short-lived instance lists the physical devices; the list is cached for the process because the
// loader and ICDs do not change while it runs (instance creation costs 0.2–0.3 s).
using Silk.NET.Vulkan;

namespace TaylorCalibrate.Backend.Vulkan;

/// <summary>A Vulkan physical device as listed by <see cref="VulkanDevices.Enumerate"/>.</summary>
public sealed record VulkanDeviceDescription(int Index, DeviceInfo Info);

/// <summary>Lists Vulkan physical devices.</summary>
public static class VulkanDevices
{
    static IReadOnlyList<VulkanDeviceDescription>? cached;
    static readonly object gate = new();

    /// <summary>Every physical device, in the loader's order (the index is the N of <c>vulkan:N</c>).</summary>
    /// <exception cref="DeviceException">No Vulkan loader, or no instance could be created.</exception>
    public static IReadOnlyList<VulkanDeviceDescription> Enumerate()
    {
        lock (gate)
        {
            if (cached is not null) return cached;
            var vk = VulkanContext.LoadApi();
            Instance instance;
            try { instance = VulkanContext.CreateInstance(vk, validation: false); }
            catch (VulkanException e) { throw new DeviceException($"no Vulkan instance: {e.Message}", e); }
            try
            {
                var list = new List<VulkanDeviceDescription>();
                var devices = VulkanContext.PhysicalDevices(vk, instance);
                for (int i = 0; i < devices.Length; i++)
                    list.Add(new VulkanDeviceDescription(i, VulkanContext.Describe(vk, devices[i])));
                cached = list;
                return list;
            }
            catch (VulkanException e) { throw new DeviceException($"cannot list Vulkan devices: {e.Message}", e); }
            finally { unsafe { vk.DestroyInstance(instance, null); } }
        }
    }
}
