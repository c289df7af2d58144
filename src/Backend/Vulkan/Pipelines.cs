// Compute pipelines of the Vulkan backend (docs/kernels.md §5): every kernel shares ONE descriptor-set layout of
// MaxBindings storage buffers and one pipeline layout with a 128-byte push-constant range, so descriptor
// sets are interchangeable and binding code is generic. Pipelines are created lazily from the SPIR-V that
// Kernels.Glsl.targets embeds as `spv.<name>.spv`, keyed by (shader, specialization constants), and go
// through a VkPipelineCache persisted under ~/.cache/taylor-calibrate/ (lavapipe also caches its LLVM
// output on disk, so the first dispatch of a pipeline is the only slow one).
using System.Reflection;
using Silk.NET.Vulkan;

namespace TaylorCalibrate.Backend.Vulkan;

/// <summary>A created pipeline and the name used in errors and profiles.</summary>
internal sealed record KernelPipeline(Pipeline Handle, string Name);

/// <summary>Lazily created compute pipelines sharing one layout.</summary>
internal sealed unsafe class Pipelines : IDisposable
{
    /// <summary>Storage-buffer bindings 0..MaxBindings−1 of the shared layout.</summary>
    public const int MaxBindings = 8;
    /// <summary>Push-constant bytes every pipeline may use (the guaranteed minimum of Vulkan).</summary>
    public const int MaxPushConstants = 128;

    readonly VulkanContext ctx;
    public readonly DescriptorSetLayout SetLayout;
    public readonly PipelineLayout Layout;
    readonly PipelineCache cache;
    readonly string? cachePath;
    readonly Dictionary<string, KernelPipeline> pipelines = new();
    readonly Dictionary<string, ShaderModule> modules = new();

    public Pipelines(VulkanContext ctx)
    {
        this.ctx = ctx;
        var vk = ctx.Vk;
        var bindings = stackalloc DescriptorSetLayoutBinding[MaxBindings];
        for (int i = 0; i < MaxBindings; i++)
            bindings[i] = new DescriptorSetLayoutBinding
            {
                Binding = (uint)i, DescriptorType = DescriptorType.StorageBuffer, DescriptorCount = 1, StageFlags = ShaderStageFlags.ComputeBit,
            };
        var setInfo = new DescriptorSetLayoutCreateInfo { SType = StructureType.DescriptorSetLayoutCreateInfo, BindingCount = MaxBindings, PBindings = bindings };
        VulkanContext.Check(vk.CreateDescriptorSetLayout(ctx.Device, &setInfo, null, out SetLayout), "vkCreateDescriptorSetLayout");
        var push = new PushConstantRange { StageFlags = ShaderStageFlags.ComputeBit, Offset = 0, Size = MaxPushConstants };
        var layout = SetLayout;
        var layoutInfo = new PipelineLayoutCreateInfo
        {
            SType = StructureType.PipelineLayoutCreateInfo, SetLayoutCount = 1, PSetLayouts = &layout, PushConstantRangeCount = 1, PPushConstantRanges = &push,
        };
        VulkanContext.Check(vk.CreatePipelineLayout(ctx.Device, &layoutInfo, null, out Layout), "vkCreatePipelineLayout");

        byte[] initial = [];
        try
        {
            var dir = Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "taylor-calibrate");
            cachePath = Path.Combine(dir, $"vk-pipelines-{ctx.CacheKey()}.bin");
            if (File.Exists(cachePath)) initial = File.ReadAllBytes(cachePath);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { cachePath = null; }
        fixed (byte* p = initial)
        {
            // The driver checks the header (vendor, device, cache UUID) and ignores data it cannot use.
            var info = new PipelineCacheCreateInfo { SType = StructureType.PipelineCacheCreateInfo, InitialDataSize = (nuint)initial.Length, PInitialData = p };
            if (vk.CreatePipelineCache(ctx.Device, &info, null, out cache) != Result.Success)
            {
                info.InitialDataSize = 0;
                VulkanContext.Check(vk.CreatePipelineCache(ctx.Device, &info, null, out cache), "vkCreatePipelineCache");
            }
        }
    }

    /// <summary>The pipeline of shader <paramref name="shader"/> (file name without .comp) specialised with
    /// constant_id i = <paramref name="spec"/>[i] (uint, int, float or bool bit patterns, 4 bytes each).</summary>
    /// <exception cref="InvalidOperationException">No embedded SPIR-V of that name.</exception>
    public KernelPipeline Get(string shader, ReadOnlySpan<uint> spec)
    {
        var key = spec.Length == 0 ? shader : shader + ":" + string.Join(",", spec.ToArray());
        if (pipelines.TryGetValue(key, out var p)) return p;
        var module = Module(shader);
        var vk = ctx.Vk;
        var entries = stackalloc SpecializationMapEntry[Math.Max(1, spec.Length)];
        var values = stackalloc uint[Math.Max(1, spec.Length)];
        for (int i = 0; i < spec.Length; i++)
        {
            entries[i] = new SpecializationMapEntry { ConstantID = (uint)i, Offset = (uint)(4 * i), Size = 4 };
            values[i] = spec[i];
        }
        var specInfo = new SpecializationInfo { MapEntryCount = (uint)spec.Length, PMapEntries = entries, DataSize = (nuint)(4 * spec.Length), PData = values };
        var main = (byte*)Silk.NET.Core.Native.SilkMarshal.StringToPtr("main");
        try
        {
            var info = new ComputePipelineCreateInfo
            {
                SType = StructureType.ComputePipelineCreateInfo, Layout = Layout,
                Stage = new PipelineShaderStageCreateInfo
                {
                    SType = StructureType.PipelineShaderStageCreateInfo, Stage = ShaderStageFlags.ComputeBit, Module = module, PName = main,
                    PSpecializationInfo = spec.Length > 0 ? &specInfo : null,
                },
            };
            Pipeline handle;
            VulkanContext.Check(vk.CreateComputePipelines(ctx.Device, cache, 1, &info, null, &handle), "vkCreateComputePipelines",
                $"shader {key}; check the specialization constants against the device limits");
            p = new KernelPipeline(handle, key);
            pipelines[key] = p;
            return p;
        }
        finally { Silk.NET.Core.Native.SilkMarshal.Free((nint)main); }
    }

    ShaderModule Module(string shader)
    {
        if (modules.TryGetValue(shader, out var m)) return m;
        var code = Spirv(shader);
        fixed (byte* p = code)
        {
            var info = new ShaderModuleCreateInfo { SType = StructureType.ShaderModuleCreateInfo, CodeSize = (nuint)code.Length, PCode = (uint*)p };
            VulkanContext.Check(ctx.Vk.CreateShaderModule(ctx.Device, &info, null, out m), "vkCreateShaderModule", $"shader {shader}");
        }
        modules[shader] = m;
        return m;
    }

    /// <summary>The embedded SPIR-V of a shader.</summary>
    public static byte[] Spirv(string shader)
    {
        var asm = typeof(Pipelines).Assembly;
        using var s = asm.GetManifestResourceStream($"spv.{shader}.spv")
                      ?? throw new InvalidOperationException($"no embedded SPIR-V 'spv.{shader}.spv' (is src/Kernels.Glsl/{shader}.comp compiled?)");
        var bytes = new byte[s.Length];
        s.ReadExactly(bytes);
        return bytes;
    }

    void SaveCache()
    {
        if (cachePath is null) return;
        try
        {
            nuint size = 0;
            if (ctx.Vk.GetPipelineCacheData(ctx.Device, cache, &size, null) != Result.Success || size == 0) return;
            var data = new byte[size];
            fixed (byte* p = data)
                if (ctx.Vk.GetPipelineCacheData(ctx.Device, cache, &size, p) != Result.Success) return;
            Directory.CreateDirectory(Path.GetDirectoryName(cachePath)!);
            var tmp = cachePath + $".{Environment.ProcessId}.tmp";
            File.WriteAllBytes(tmp, data.AsSpan(0, (int)size).ToArray());
            File.Move(tmp, cachePath, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { /* the cache is an optimisation */ }
    }

    public void Dispose()
    {
        SaveCache();
        var vk = ctx.Vk;
        foreach (var p in pipelines.Values) vk.DestroyPipeline(ctx.Device, p.Handle, null);
        foreach (var m in modules.Values) vk.DestroyShaderModule(ctx.Device, m, null);
        vk.DestroyPipelineCache(ctx.Device, cache, null);
        vk.DestroyPipelineLayout(ctx.Device, Layout, null);
        vk.DestroyDescriptorSetLayout(ctx.Device, SetLayout, null);
    }
}
