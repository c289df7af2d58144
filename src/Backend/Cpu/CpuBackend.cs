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
    /// <exception cref="ArgumentException"><paramref name="threads"/> is negative.</exception>
    public CpuBackend(int threads = 0)
    {
        if (threads < 0) throw new ArgumentException($"CPU backend thread count must be ≥ 0, got {threads}", nameof(threads));
        this.threads = threads == 0 ? Environment.ProcessorCount : threads;
        Workers = new CpuParallel(this.threads);
    }

    /// <summary>How many threads parallel ops use.</summary>
    public int Threads => threads;

    /// <summary>The parallel-loop helper every op family uses.</summary>
    internal CpuParallel Workers { get; }

    /// <inheritdoc />
    public string Name => "cpu";

    /// <inheritdoc />
    public DeviceInfo Info => Describe();

    /// <summary>Describes the CPU backend (cores, SIMD width).</summary>
    public static DeviceInfo Describe() =>
        new("CPU backend", "cpu", "", ".NET " + Environment.Version, 0, System.Numerics.Vector<float>.Count,
            $"{Environment.ProcessorCount} cores, {MicroKernels.Describe(ActiveGemmKernel)}{Forced}");

    /// <summary>The GEMM kernel a new backend uses: forced by TC_CPU_GEMM, else the best this processor runs.</summary>
    static GemmKernelKind ActiveGemmKernel
    {
        get
        {
            try { return MicroKernels.FromEnvironment(); }
            catch (ArgumentException) { return MicroKernels.Best; }
        }
    }

    static string Forced =>
        string.IsNullOrWhiteSpace(Environment.GetEnvironmentVariable(MicroKernels.ForceVariable)) ? ""
        : $" (forced by {MicroKernels.ForceVariable})";

    /// <summary>Nothing to release: tensors are managed arrays.</summary>
    public void Dispose() { }
}
