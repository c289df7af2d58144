// Device selection: --device auto|cpu|cpu:N|vulkan|vulkan:N|vulkan:NAME. `auto` takes the best Vulkan GPU
// (discrete > integrated > virtual), else the CPU backend; a CPU-type Vulkan driver (lavapipe/llvmpipe,
// SwiftShader) is used only when asked for by index or name, or by plain `vulkan` when it is the only one.
// `cpu:N` names the N-th CPU worker: several CPU backends in one process (DeviceSet.cs), each an
// independent instance over the same cores; `cpu` is `cpu:0`.
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
    public static IBackend Open(string spec) => OpenResolved(Resolve(spec), 0);

    /// <summary>The canonical id of one <c>--device</c> entry: <c>cpu:N</c> or <c>vulkan:N</c> (the index
    /// that a name, plain <c>vulkan</c> or <c>auto</c> selects), so two spellings of one device compare equal.</summary>
    /// <exception cref="DeviceException">Unknown name, index out of range, no Vulkan loader or no device.</exception>
    public static string Resolve(string spec)
    {
        var s = (spec ?? "auto").Trim();
        var lower = s.ToLowerInvariant();
        if (lower == "cpu") return "cpu:0";
        if (lower.StartsWith("cpu:"))
        {
            if (int.TryParse(s["cpu:".Length..], out var worker) && worker >= 0 && s["cpu:".Length..].All(char.IsAsciiDigit))
                return $"cpu:{worker}";
            throw new DeviceException($"--device {s}: expected cpu:N with N a worker number ≥ 0");
        }
        if (lower == "auto")
        {
            IReadOnlyList<VulkanDeviceDescription> vk;
            try { vk = VulkanDevices.Enumerate(); }
            catch (DeviceException) { return "cpu:0"; }
            return BestGpu(vk) is int i ? $"vulkan:{i}" : "cpu:0";
        }
        if (lower == "vulkan" || lower.StartsWith("vulkan:"))
        {
            var vk = VulkanDevices.Enumerate();
            if (vk.Count == 0) throw new DeviceException($"--device {s}: no Vulkan device found (is a driver installed? on Debian: apt-get install -y mesa-vulkan-drivers)");
            if (lower == "vulkan") return $"vulkan:{BestGpu(vk) ?? vk[0].Index}";
            var sel = s["vulkan:".Length..];
            if (int.TryParse(sel, out var idx))
            {
                if (idx < 0 || idx >= vk.Count)
                    throw new DeviceException($"--device {s}: there are {vk.Count} Vulkan devices (0..{vk.Count - 1}); run `taylor-calibrate devices`");
                return $"vulkan:{idx}";
            }
            var hits = vk.Where(d => d.Info.Name.Contains(sel, StringComparison.OrdinalIgnoreCase)).ToList();
            if (hits.Count == 0)
                throw new DeviceException($"--device {s}: no Vulkan device name contains '{sel}'; devices: {string.Join("; ", vk.Select(d => $"{d.Index}: {d.Info.Name}"))}");
            return $"vulkan:{hits[0].Index}";
        }
        throw new DeviceException($"--device {s}: expected auto, cpu, cpu:N, vulkan, vulkan:N or vulkan:NAME");
    }

    /// <summary>Opens a canonical id from <see cref="Resolve"/>; <paramref name="cpuThreads"/> caps a CPU
    /// backend's threads (0: every core).</summary>
    public static IBackend OpenResolved(string id, int cpuThreads) =>
        id.StartsWith("cpu:") ? new CpuBackend(cpuThreads)
        : id.StartsWith("vulkan:") ? new VulkanBackend(int.Parse(id["vulkan:".Length..]))
        : throw new DeviceException($"--device {id}: not a resolved device id");

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
