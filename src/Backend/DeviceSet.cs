// A device list, `--device vulkan:0,vulkan:1` or `cpu:0,cpu:1` or mixed: several backends in one process for
// work that splits into independent jobs (per-layer conversion, docs/architecture.md "Scale-out"). Each entry
// resolves to a canonical id (Devices.Resolve), so one device named twice, by index and by name, is refused.
namespace TaylorCalibrate.Backend;

/// <summary>One opened entry of a device list: its canonical id and its backend.</summary>
public sealed record DeviceWorker(string Id, IBackend Backend);

/// <summary>Parses and opens comma-separated device lists.</summary>
public static class DeviceSet
{
    /// <summary>The canonical ids of a comma-separated list, in the order given.</summary>
    /// <exception cref="DeviceException">An empty entry, an unknown device, or one device named twice.</exception>
    public static IReadOnlyList<string> Resolve(string spec)
    {
        var s = (spec ?? "auto").Trim();
        var entries = s.Split(',');
        var ids = new List<string>();
        var spelled = new Dictionary<string, string>();
        foreach (var raw in entries)
        {
            var e = raw.Trim();
            if (e.Length == 0) throw new DeviceException($"--device {s}: empty entry in the device list (expected e.g. vulkan:0,vulkan:1)");
            string id;
            try { id = Devices.Resolve(e); }
            catch (DeviceException x) when (entries.Length > 1 && x.Message.StartsWith($"--device {e}: "))
            {
                // Name the whole option and the entry at fault.
                throw new DeviceException($"--device {s}: entry '{e}': {x.Message[$"--device {e}: ".Length..]}");
            }
            if (spelled.TryGetValue(id, out var first))
                throw new DeviceException(first == e
                    ? $"--device {s}: device {id} is named twice; each device can run one worker (two CPU workers: cpu:0,cpu:1)"
                    : $"--device {s}: '{first}' and '{e}' are the same device {id}; each device can run one worker");
            spelled[id] = e;
            ids.Add(id);
        }
        return ids;
    }

    /// <summary>Opens every entry of the list. CPU workers share the cores evenly (their results do not
    /// depend on the thread count: CpuParallel cuts work by shape). On failure, what was opened is disposed.</summary>
    /// <exception cref="DeviceException">See <see cref="Resolve"/>.</exception>
    public static IReadOnlyList<DeviceWorker> Open(string spec)
    {
        var ids = Resolve(spec);
        int cpus = ids.Count(id => id.StartsWith("cpu:"));
        int threads = cpus <= 1 ? 0 : Math.Max(1, Environment.ProcessorCount / cpus);
        var opened = new List<DeviceWorker>();
        try
        {
            foreach (var id in ids) opened.Add(new DeviceWorker(id, Devices.OpenResolved(id, threads)));
            return opened;
        }
        catch
        {
            foreach (var w in opened) w.Backend.Dispose();
            throw;
        }
    }
}
