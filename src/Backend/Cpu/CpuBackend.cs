// The CPU backend: every op of IBackend in multi-threaded SIMD C#, synchronously on the caller's thread
// (parallel inside). The ops live in partial-class files by family (CpuBackend.Gemm.cs, .Elementwise.cs,
// .Norms.cs, .Embedding.cs, .Losses.cs, .Optim.cs, .Memory.cs; attention/GDN in .Sequence*.cs).
// Maths of every op: docs/kernels.md.
using TaylorCalibrate.Backend.Cpu.Gemm;

namespace TaylorCalibrate.Backend.Cpu;

/// <summary>Multi-threaded SIMD CPU implementation of <see cref="IBackend"/>.</summary>
public sealed partial class CpuBackend : IBackend
{
    readonly int threads;

    /// <summary>Opens the CPU backend.</summary>
    /// <param name="threads">Worker threads for parallel ops; 0 (the default) uses every core. Results do
    /// not depend on this number: work is split by shape, never by thread count.</param>
    /// <exception cref="ArgumentException"><paramref name="threads"/> is negative, or TC_CPU_SIMD names no
    /// width this process runs.</exception>
    public CpuBackend(int threads = 0) : this(threads, CpuVectorWidths.FromEnvironment()) { }

    /// <summary>Opens the CPU backend with the given vector width for its non-GEMM kernels (TC_CPU_SIMD is
    /// not read).</summary>
    /// <exception cref="ArgumentException"><paramref name="threads"/> is negative, or this process cannot run
    /// <paramref name="width"/>.</exception>
    public CpuBackend(int threads, CpuVectorWidth width)
    {
        if (threads < 0) throw new ArgumentException($"CPU backend thread count must be ≥ 0, got {threads}", nameof(threads));
        if (!CpuVectorWidths.IsSupported(width))
            throw new ArgumentException($"CPU backend: this process cannot run the {CpuVectorWidths.Name(width)} vector width", nameof(width));
        this.threads = threads == 0 ? Environment.ProcessorCount : threads;
        Workers = new CpuParallel(this.threads);
        VectorWidth = width;
    }

    /// <summary>Vector width of the attention, gated-delta-rule, row and optimiser kernels (VectorWidth.cs).</summary>
    public CpuVectorWidth VectorWidth { get; }

    /// <summary>Whether those kernels take their 512-bit forms.</summary>
    internal bool Wide => VectorWidth == CpuVectorWidth.Avx512;

    /// <summary>How many threads parallel ops use.</summary>
    public int Threads => threads;

    /// <summary>The parallel-loop helper every op family uses.</summary>
    internal CpuParallel Workers { get; }

    /// <inheritdoc />
    public string Name => "cpu";

    /// <inheritdoc />
    public DeviceInfo Info => Describe(GemmKernel, VectorWidth);

    /// <summary>Describes a CPU backend opened now (cores, GEMM kernel, vector width of the other kernels).</summary>
    public static DeviceInfo Describe() => Describe(ActiveGemmKernel, ActiveWidth);

    static DeviceInfo Describe(GemmKernelKind kernel, CpuVectorWidth width) =>
        new("CPU backend", "cpu", "", ".NET " + Environment.Version, 0,
            width == CpuVectorWidth.Avx512 ? 16 : System.Numerics.Vector<float>.Count,
            $"{Environment.ProcessorCount} cores, {MicroKernels.Describe(kernel)}{Forced}, " +
            $"{(width == CpuVectorWidth.Avx512 ? "512" : "256")}-bit vector kernels{ForcedWidth}");

    /// <summary>The GEMM kernel a new backend uses: forced by TC_CPU_GEMM, else the best this processor runs.</summary>
    static GemmKernelKind ActiveGemmKernel
    {
        get
        {
            try { return MicroKernels.FromEnvironment(); }
            catch (ArgumentException) { return MicroKernels.Best; }
        }
    }

    /// <summary>The vector width a new backend uses: forced by TC_CPU_SIMD, else the widest this process runs.</summary>
    static CpuVectorWidth ActiveWidth
    {
        get
        {
            try { return CpuVectorWidths.FromEnvironment(); }
            catch (ArgumentException) { return CpuVectorWidths.Best; }
        }
    }

    static string ForcedWidth =>
        string.IsNullOrWhiteSpace(Environment.GetEnvironmentVariable(CpuVectorWidths.ForceVariable)) ? ""
        : $" (forced by {CpuVectorWidths.ForceVariable})";

    static string Forced =>
        string.IsNullOrWhiteSpace(Environment.GetEnvironmentVariable(MicroKernels.ForceVariable)) ? ""
        : $" (forced by {MicroKernels.ForceVariable})";

    /// <summary>Nothing to release: tensors are managed arrays.</summary>
    public void Dispose() { }
}
