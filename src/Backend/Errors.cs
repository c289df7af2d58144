// Exceptions the backend raises for conditions a user can fix (a bad --device, no Vulkan loader) or that
// come from a device. Shape and argument mistakes of callers are ArgumentExceptions (see Check.cs).
namespace TaylorCalibrate.Backend;

/// <summary>A device could not be selected or opened: unknown name, no Vulkan loader, no device.</summary>
public sealed class DeviceException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>A Vulkan call failed. Carries the operation, the VkResult name and a hint.</summary>
public sealed class VulkanException(string operation, string result, string hint)
    : Exception($"Vulkan {operation} failed with {result}" + (hint.Length > 0 ? $": {hint}" : ""))
{
    /// <summary>What was being done, e.g. <c>vkAllocateMemory</c>.</summary>
    public string Operation { get; } = operation;
    /// <summary>The VkResult, e.g. <c>ErrorOutOfDeviceMemory</c>.</summary>
    public string Result { get; } = result;
}
