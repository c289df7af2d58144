// STUB: the CPU backend (multi-threaded SIMD C#). Replaced by the real implementation.
namespace TaylorCalibrate.Backend.Cpu;

/// <summary>Multi-threaded SIMD CPU implementation of <see cref="IBackend"/>.</summary>
public sealed partial class CpuBackend : IBackend
{
    /// <summary>Describes the CPU backend (cores, SIMD width).</summary>
    public static DeviceInfo Describe() =>
        new("CPU backend", "cpu", "", ".NET " + Environment.Version, 0, System.Numerics.Vector<float>.Count, $"{Environment.ProcessorCount} cores");
}
