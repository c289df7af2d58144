// Device selection: --device auto|cpu|vulkan|vulkan:N|vulkan:NAME. `auto` takes the best Vulkan GPU
// (discrete > integrated > virtual), else the CPU backend; a CPU-type Vulkan driver (lavapipe/llvmpipe,
// SwiftShader) is used only when asked for by index or name, or by plain `vulkan` when it is the only one.
using TaylorCalibrate.Backend.Cpu;
using TaylorCalibrate.Backend.Vulkan;

namespace TaylorCalibrate.Backend;

/// <summary>One entry of the device list.</summary>
public sealed record DeviceEntry(string Id, DeviceInfo Info, bool IsAuto);

/// <summary>The device list, and why Vulkan devices are missing when they are (null otherwise).</summary>
public sealed record DeviceList(IReadOnlyList<DeviceEntry> Entries, string? VulkanProblem);

/// <summary>Lists devices and opens backends by <c>--device</c> string.</summary>
public static class Devices
{
    /// <summary>The Vulkan devices (empty with the reason when there is no loader or no device) and the CPU backend.</summary>
    public static DeviceList List()
    {
        var entries = new List<DeviceEntry>();
        string? problem = null;
        IReadOnlyList<VulkanDeviceDescription> vk = [];
        try { vk = VulkanDevices.Enumerate(); }
        catch (DeviceException e) { problem = e.Message; }
        int? auto = BestGpu(vk);
        foreach (var d in vk) entries.Add(new DeviceEntry($"vulkan:{d.Index}", d.Info, auto == d.Index));
        entries.Add(new DeviceEntry("cpu", CpuBackend.Describe(), auto is null));
        if (problem is null && vk.Count == 0) problem = "no Vulkan device found";
        return new DeviceList(entries, problem);
    }

    /// <summary>Opens the backend named by <paramref name="spec"/>.</summary>
    /// <exception cref="DeviceException">Unknown name, index out of range, no Vulkan loader or no device.</exception>
    public static IBackend Open(string spec)
    {
        var s = (spec ?? "auto").Trim();
        var lower = s.ToLowerInvariant();
        if (lower == "cpu") return new CpuBackend();
        if (lower == "auto")
        {
            IReadOnlyList<VulkanDeviceDescription> vk;
            try { vk = VulkanDevices.Enumerate(); }
            catch (DeviceException) { return new CpuBackend(); }
            return BestGpu(vk) is int i ? new VulkanBackend(i) : new CpuBackend();
        }
        if (lower == "vulkan" || lower.StartsWith("vulkan:"))
        {
            var vk = VulkanDevices.Enumerate();
            if (vk.Count == 0) throw new DeviceException($"--device {s}: no Vulkan device found (is a driver installed? on Debian: apt-get install -y mesa-vulkan-drivers)");
            if (lower == "vulkan") return new VulkanBackend(BestGpu(vk) ?? vk[0].Index);
            var sel = s["vulkan:".Length..];
            if (int.TryParse(sel, out var idx))
            {
                if (idx < 0 || idx >= vk.Count)
                    throw new DeviceException($"--device {s}: there are {vk.Count} Vulkan devices (0..{vk.Count - 1}); run `taylor-calibrate devices`");
                return new VulkanBackend(idx);
            }
            var hits = vk.Where(d => d.Info.Name.Contains(sel, StringComparison.OrdinalIgnoreCase)).ToList();
            if (hits.Count == 0)
                throw new DeviceException($"--device {s}: no Vulkan device name contains '{sel}'; devices: {string.Join("; ", vk.Select(d => $"{d.Index}: {d.Info.Name}"))}");
            return new VulkanBackend(hits[0].Index);
        }
        throw new DeviceException($"--device {s}: expected auto, cpu, vulkan, vulkan:N or vulkan:NAME");
    }

    static int? BestGpu(IReadOnlyList<VulkanDeviceDescription> vk)
    {
        static int Rank(VulkanDeviceDescription d) => d.Info.Kind switch
        {
            "discrete-gpu" => 3, "integrated-gpu" => 2, "virtual-gpu" => 1, _ => 0,
        };
        var best = vk.Where(d => Rank(d) > 0).OrderByDescending(Rank).ThenByDescending(d => d.Info.MemoryBytes).FirstOrDefault();
        return best?.Index;
    }
}
