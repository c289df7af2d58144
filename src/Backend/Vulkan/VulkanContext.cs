// VulkanContext: the Vulkan instance, one physical + logical device, its compute queue and the limits the
// kernels depend on (subgroup size, maxStorageBufferRange, shared memory, offset alignment). Organisation:
// docs/kernels.md §5; lavapipe facts: docs/kernels.md §6. Every Vulkan result goes through Check, which turns a
// failure into a VulkanException(op, result, hint).
using System.Runtime.InteropServices;
using Silk.NET.Core;
using Silk.NET.Core.Native;
using Silk.NET.Vulkan;

namespace TaylorCalibrate.Backend.Vulkan;

/// <summary>Instance, device, compute queue and device limits of one Vulkan device.</summary>
internal sealed unsafe class VulkanContext : IDisposable
{
    public readonly Vk Vk;
    public readonly Instance Instance;
    public readonly PhysicalDevice Physical;
    public readonly Device Device;
    public readonly Queue Queue;
    public readonly uint QueueFamily;
    public readonly PhysicalDeviceProperties Properties;
    public readonly PhysicalDeviceMemoryProperties MemoryProperties;
    public readonly DeviceInfo Info;
    /// <summary>Subgroup size the driver reports (lavapipe 8). Kernels must not assume 32/64.</summary>
    public readonly uint SubgroupSize;
    /// <summary>Whether compute shaders may use subgroupBroadcast (ballot class) and arithmetic ops.</summary>
    public readonly bool SubgroupBallot, SubgroupArithmetic;
    /// <summary>Timestamp bits of the queue family (0 = no timestamps).</summary>
    public readonly uint TimestampValidBits;

    public ulong MaxStorageBufferRange => Properties.Limits.MaxStorageBufferRange;
    public ulong MinStorageBufferOffsetAlignment => Math.Max(4UL, Properties.Limits.MinStorageBufferOffsetAlignment);
    public uint MaxSharedMemory => Properties.Limits.MaxComputeSharedMemorySize;
    public bool IsCpu => Properties.DeviceType == PhysicalDeviceType.Cpu;
    /// <summary>Largest single allocation (VkPhysicalDeviceMaintenance3Properties), at least 1 GiB by spec.</summary>
    public readonly ulong MaxAllocationSize;
    /// <summary>Largest VkBuffer (VkPhysicalDeviceMaintenance4Properties when known, else the allocation size).</summary>
    public readonly ulong MaxBufferSize;

    /// <summary>Opens device <paramref name="index"/> of the loader's list.</summary>
    /// <exception cref="DeviceException">No loader, no such device, or the device lacks Vulkan 1.2 / compute.</exception>
    public VulkanContext(int index)
    {
        Vk = LoadApi();
        Instance = CreateInstance(Vk, EnableValidation());
        try
        {
            var devices = PhysicalDevices(Vk, Instance);
            if (index < 0 || index >= devices.Length)
                throw new DeviceException($"Vulkan device {index} does not exist ({devices.Length} devices); run `taylor-calibrate devices`");
            Physical = devices[index];
            Properties = Vk.GetPhysicalDeviceProperties(Physical);
            MemoryProperties = Vk.GetPhysicalDeviceMemoryProperties(Physical);
            if (Properties.ApiVersion < Vk.Version12)
                throw new DeviceException($"Vulkan device {index} ({Describe(Vk, Physical).Name}) supports Vulkan {VersionText(Properties.ApiVersion)}; the kernels need 1.2");
            Info = Describe(Vk, Physical);

            var sub = new PhysicalDeviceSubgroupProperties { SType = StructureType.PhysicalDeviceSubgroupProperties };
            var m3 = new PhysicalDeviceMaintenance3Properties { SType = StructureType.PhysicalDeviceMaintenance3Properties, PNext = &sub };
            var p2 = new PhysicalDeviceProperties2 { SType = StructureType.PhysicalDeviceProperties2, PNext = &m3 };
            Vk.GetPhysicalDeviceProperties2(Physical, &p2);
            SubgroupSize = Math.Max(1u, sub.SubgroupSize);
            bool compute = (sub.SupportedStages & ShaderStageFlags.ComputeBit) != 0;
            SubgroupBallot = compute && (sub.SupportedOperations & SubgroupFeatureFlags.BallotBit) != 0;
            SubgroupArithmetic = compute && (sub.SupportedOperations & SubgroupFeatureFlags.ArithmeticBit) != 0;
            MaxAllocationSize = m3.MaxMemoryAllocationSize != 0 ? m3.MaxMemoryAllocationSize : 1UL << 30;
            MaxBufferSize = MaxAllocationSize;

            QueueFamily = FindComputeQueue(Vk, Physical, out TimestampValidBits);
            float priority = 1f;
            var queueInfo = new DeviceQueueCreateInfo
            {
                SType = StructureType.DeviceQueueCreateInfo, QueueFamilyIndex = QueueFamily, QueueCount = 1, PQueuePriorities = &priority,
            };
            var deviceInfo = new DeviceCreateInfo { SType = StructureType.DeviceCreateInfo, QueueCreateInfoCount = 1, PQueueCreateInfos = &queueInfo };
            Check(Vk.CreateDevice(Physical, &deviceInfo, null, out Device), "vkCreateDevice", "the driver refused to open the device");
            Vk.GetDeviceQueue(Device, QueueFamily, 0, out Queue);
        }
        catch
        {
            if (Device.Handle != 0) Vk.DestroyDevice(Device, null);
            Vk.DestroyInstance(Instance, null);
            throw;
        }
    }

    /// <summary>Throws VulkanException unless <paramref name="r"/> is Success.</summary>
    public static void Check(Result r, string operation, string hint = "")
    {
        if (r == Result.Success) return;
        if (hint.Length == 0)
            hint = r switch
            {
                Result.ErrorOutOfDeviceMemory => "the device is out of memory; use smaller batches or sequences",
                Result.ErrorOutOfHostMemory => "the host is out of memory",
                Result.ErrorDeviceLost => "the device was lost (driver timeout or crash); a dispatch may have run too long",
                _ => "",
            };
        throw new VulkanException(operation, r.ToString(), hint);
    }

    /// <summary>Loads libvulkan.so.1 (or the platform's loader).</summary>
    /// <exception cref="DeviceException">The loader is missing.</exception>
    public static Vk LoadApi()
    {
        try { return Vk.GetApi(); }
        catch (Exception e)
        {
            throw new DeviceException(
                "the Vulkan loader (libvulkan.so.1) could not be loaded; on Debian: apt-get install -y libvulkan1 mesa-vulkan-drivers", e);
        }
    }

    static bool EnableValidation() =>
        Environment.GetEnvironmentVariable("TC_VULKAN_VALIDATION") == "1";

    /// <summary>Creates a Vulkan 1.2 instance; with <paramref name="validation"/> the Khronos validation layer when installed.</summary>
    public static Instance CreateInstance(Vk vk, bool validation)
    {
        var appName = (byte*)SilkMarshal.StringToPtr("TaylorCalibrate");
        var layerName = (byte*)SilkMarshal.StringToPtr("VK_LAYER_KHRONOS_validation");
        try
        {
            var app = new ApplicationInfo
            {
                SType = StructureType.ApplicationInfo, PApplicationName = appName, ApplicationVersion = 1,
                PEngineName = appName, EngineVersion = 1, ApiVersion = Vk.Version12,
            };
            var info = new InstanceCreateInfo { SType = StructureType.InstanceCreateInfo, PApplicationInfo = &app };
            // VK_INSTANCE_LAYERS is honoured by the loader itself; TC_VULKAN_VALIDATION=1 asks for the layer here.
            if (validation && HasLayer(vk, "VK_LAYER_KHRONOS_validation"))
            {
                info.EnabledLayerCount = 1;
                info.PpEnabledLayerNames = &layerName;
            }
            Check(vk.CreateInstance(&info, null, out var instance), "vkCreateInstance", "no Vulkan 1.2 driver? on Debian: apt-get install -y mesa-vulkan-drivers");
            return instance;
        }
        finally
        {
            SilkMarshal.Free((nint)appName);
            SilkMarshal.Free((nint)layerName);
        }
    }

    static bool HasLayer(Vk vk, string name)
    {
        uint n = 0;
        vk.EnumerateInstanceLayerProperties(&n, null);
        var layers = new LayerProperties[n];
        fixed (LayerProperties* p = layers) vk.EnumerateInstanceLayerProperties(&n, p);
        foreach (var l in layers)
            if (SilkMarshal.PtrToString((nint)l.LayerName) == name) return true;
        return false;
    }

    public static PhysicalDevice[] PhysicalDevices(Vk vk, Instance instance)
    {
        uint n = 0;
        Check(vk.EnumeratePhysicalDevices(instance, &n, null), "vkEnumeratePhysicalDevices");
        var devices = new PhysicalDevice[n];
        fixed (PhysicalDevice* p = devices) Check(vk.EnumeratePhysicalDevices(instance, &n, p), "vkEnumeratePhysicalDevices");
        return devices;
    }

    static uint FindComputeQueue(Vk vk, PhysicalDevice pd, out uint timestampBits)
    {
        uint n = 0;
        vk.GetPhysicalDeviceQueueFamilyProperties(pd, &n, null);
        var families = new QueueFamilyProperties[n];
        fixed (QueueFamilyProperties* p = families) vk.GetPhysicalDeviceQueueFamilyProperties(pd, &n, p);
        // Prefer a compute family without graphics (async compute on discrete GPUs), else any compute family.
        int best = -1;
        for (int i = 0; i < n; i++)
        {
            if ((families[i].QueueFlags & QueueFlags.ComputeBit) == 0) continue;
            if (best < 0 || (families[i].QueueFlags & QueueFlags.GraphicsBit) == 0 && (families[best].QueueFlags & QueueFlags.GraphicsBit) != 0)
                best = i;
        }
        if (best < 0) throw new DeviceException("the Vulkan device has no compute queue");
        timestampBits = families[best].TimestampValidBits;
        return (uint)best;
    }

    /// <summary>The DeviceInfo of a physical device (name, kind, vendor, driver, device-local memory, subgroup size).</summary>
    public static DeviceInfo Describe(Vk vk, PhysicalDevice pd)
    {
        var props = vk.GetPhysicalDeviceProperties(pd);
        var driver = new PhysicalDeviceDriverProperties { SType = StructureType.PhysicalDeviceDriverProperties };
        var sub = new PhysicalDeviceSubgroupProperties { SType = StructureType.PhysicalDeviceSubgroupProperties, PNext = &driver };
        var p2 = new PhysicalDeviceProperties2 { SType = StructureType.PhysicalDeviceProperties2, PNext = &sub };
        bool v12 = props.ApiVersion >= Vk.Version11;
        if (v12) vk.GetPhysicalDeviceProperties2(pd, &p2);
        var mem = vk.GetPhysicalDeviceMemoryProperties(pd);
        long local = 0;
        for (int i = 0; i < mem.MemoryHeapCount; i++)
            if ((mem.MemoryHeaps[i].Flags & MemoryHeapFlags.DeviceLocalBit) != 0) local += (long)mem.MemoryHeaps[i].Size;
        string name = SilkMarshal.PtrToString((nint)props.DeviceName) ?? "?";
        string kind = props.DeviceType switch
        {
            PhysicalDeviceType.DiscreteGpu => "discrete-gpu",
            PhysicalDeviceType.IntegratedGpu => "integrated-gpu",
            PhysicalDeviceType.VirtualGpu => "virtual-gpu",
            PhysicalDeviceType.Cpu => "cpu",
            _ => "other",
        };
        string vendor = props.VendorID switch
        {
            0x10DE => "NVIDIA", 0x1002 => "AMD", 0x8086 => "Intel", 0x10005 => "Mesa", 0x13B5 => "ARM",
            0x5143 => "Qualcomm", 0x1010 => "Imagination", 0x106B => "Apple", 0x1AE0 => "Google",
            var v => $"0x{v:X}",
        };
        string driverText = v12 && props.ApiVersion >= Vk.Version12
            ? $"{SilkMarshal.PtrToString((nint)driver.DriverName)} {SilkMarshal.PtrToString((nint)driver.DriverInfo)}".Trim()
            : $"driver 0x{props.DriverVersion:X}";
        var l = props.Limits;
        string details = $"Vulkan {VersionText(props.ApiVersion)}, maxStorageBufferRange {l.MaxStorageBufferRange >> 20} MiB, "
                         + $"shared {l.MaxComputeSharedMemorySize >> 10} KiB, max workgroup {l.MaxComputeWorkGroupInvocations}";
        return new DeviceInfo(name, kind, vendor, driverText, local, (int)sub.SubgroupSize, details);
    }

    static string VersionText(uint v) => $"{v >> 22}.{(v >> 12) & 0x3FF}.{v & 0xFFF}";

    /// <summary>A key for on-disk caches: vendor, device, driver version and pipeline-cache UUID.</summary>
    public string CacheKey()
    {
        var p = Properties;
        var uuid = new ReadOnlySpan<byte>(p.PipelineCacheUuid, 16);
        return $"{p.VendorID:x}-{p.DeviceID:x}-{p.DriverVersion:x}-{Convert.ToHexString(uuid).ToLowerInvariant()}";
    }

    public void Dispose()
    {
        Vk.DeviceWaitIdle(Device);
        Vk.DestroyDevice(Device, null);
        Vk.DestroyInstance(Instance, null);
    }
}
