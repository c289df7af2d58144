// STUB: Vulkan device enumeration. Replaced by the real implementation.
namespace TaylorCalibrate.Backend.Vulkan;

/// <summary>A Vulkan physical device as listed by <see cref="VulkanDevices.Enumerate"/>.</summary>
public sealed record VulkanDeviceDescription(int Index, DeviceInfo Info);

/// <summary>Lists Vulkan physical devices.</summary>
public static class VulkanDevices
{
    /// <summary>Every physical device, in the loader's order.</summary>
    /// <exception cref="DeviceException">No Vulkan loader.</exception>
    public static IReadOnlyList<VulkanDeviceDescription> Enumerate() => throw new DeviceException("Vulkan backend not built yet");
}
