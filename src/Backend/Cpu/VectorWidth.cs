// The vector width of the CPU backend's kernels other than the GEMM micro-kernel: flash attention, both
// gated-delta-rule forms, the row kernels (RMSNorm, softmax, the vocabulary losses, the fixed-order
// reductions). 512-bit forms (Vector512) where the processor accelerates them (AVX-512), 256-bit forms
// (Vector256, AVX2) otherwise; each kernel's scalar loop stays its specification. AdamW is 256-bit everywhere
// (memory-bound; its 512-bit form was slower: CpuBackend.Optim.cs). TC_CPU_SIMD forces a
// width, so tests and benchmarks can run both on one machine; a backend built with an explicit width runs
// it regardless of the variable (the `cpu-vector` bench suite compares both in one process).
// The GEMM kernel is chosen separately (TC_CPU_GEMM, Gemm/MicroKernels.cs).
using System.Runtime.Intrinsics;

namespace TaylorCalibrate.Backend.Cpu;

/// <summary>Vector width of the CPU backend's non-GEMM kernels.</summary>
public enum CpuVectorWidth
{
    /// <summary>Vector256 (AVX2 on x86-64).</summary>
    Avx2,
    /// <summary>Vector512 (AVX-512F; Zen 4/5, Skylake-X and later).</summary>
    Avx512,
}

/// <summary>Which <see cref="CpuVectorWidth"/> runs here, and the TC_CPU_SIMD variable that forces one.</summary>
public static class CpuVectorWidths
{
    /// <summary>Environment variable that forces a width: avx2, avx512 or auto.</summary>
    public const string ForceVariable = "TC_CPU_SIMD";

    /// <summary>Whether this process can run <paramref name="width"/>: 512 bits only when the runtime
    /// accelerates Vector512 (AVX-512 present and not turned off with DOTNET_PreferredVectorBitWidth=256).</summary>
    public static bool IsSupported(CpuVectorWidth width) =>
        width != CpuVectorWidth.Avx512 || Vector512.IsHardwareAccelerated;

    /// <summary>The widest width this process runs.</summary>
    public static CpuVectorWidth Best => IsSupported(CpuVectorWidth.Avx512) ? CpuVectorWidth.Avx512 : CpuVectorWidth.Avx2;

    /// <summary>Every width this process runs, narrowest first.</summary>
    public static IReadOnlyList<CpuVectorWidth> Supported => Enum.GetValues<CpuVectorWidth>().Where(IsSupported).ToArray();

    /// <summary>The name <see cref="ForceVariable"/> takes for a width.</summary>
    public static string Name(CpuVectorWidth width) => width == CpuVectorWidth.Avx512 ? "avx512" : "avx2";

    /// <summary>The width to use: <see cref="ForceVariable"/> when set, else <see cref="Best"/>.</summary>
    /// <exception cref="ArgumentException">The variable names no width, or one this process cannot run.</exception>
    public static CpuVectorWidth FromEnvironment() => Parse(Environment.GetEnvironmentVariable(ForceVariable));

    /// <summary>The width a value of <see cref="ForceVariable"/> asks for (null, empty or "auto": <see cref="Best"/>).</summary>
    /// <exception cref="ArgumentException">The value names no width, or one this process cannot run.</exception>
    public static CpuVectorWidth Parse(string? value)
    {
        var v = value?.Trim().ToLowerInvariant();
        if (string.IsNullOrEmpty(v) || v == "auto") return Best;
        foreach (var width in Enum.GetValues<CpuVectorWidth>())
            if (Name(width) == v)
                return IsSupported(width) ? width
                    : throw new ArgumentException($"{ForceVariable}={v}: this process cannot run 512-bit vectors (no AVX-512, or DOTNET_PreferredVectorBitWidth < 512); it runs {string.Join(", ", Supported.Select(Name))}");
        throw new ArgumentException($"{ForceVariable}={v}: expected auto, {string.Join(", ", Enum.GetValues<CpuVectorWidth>().Select(Name))}");
    }
}
