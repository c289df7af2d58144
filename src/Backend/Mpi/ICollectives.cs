// What data-parallel training needs from a group of ranks (docs/architecture.md "Scale-out"): who am I, how
// many are we, a sum whose order is fixed by rank (so a result never depends on which rank was faster), a
// broadcast and a barrier. MpiWorld implements it over MPI; tests implement it over threads of one process.
namespace TaylorCalibrate.Backend.Mpi;

/// <summary>Collective operations over the ranks of one job.</summary>
public interface ICollectives
{
    /// <summary>This rank, 0 ≤ Rank &lt; Size.</summary>
    int Rank { get; }

    /// <summary>Number of ranks.</summary>
    int Size { get; }

    /// <summary>Replaces <paramref name="data"/> on every rank by the element-wise sum over ranks, added in
    /// rank order (((x₀ + x₁) + x₂) + …) in float32 whatever the timing: every rank gets the same bits.</summary>
    void SumInRankOrder(Span<float> data);

    /// <summary>The sum over ranks of one double, added in rank order; the same on every rank.</summary>
    double SumInRankOrder(double value);

    /// <summary>Copies <paramref name="data"/> of rank <paramref name="root"/> to every rank (same length everywhere).</summary>
    void Broadcast(Span<byte> data, int root);

    /// <summary>Returns when every rank called it.</summary>
    void Barrier();
}

/// <summary>The one-rank group: what a process started without an MPI launcher uses.</summary>
public sealed class SingleRank : ICollectives
{
    /// <summary>The shared instance (it holds no state).</summary>
    public static readonly SingleRank Instance = new();
    /// <inheritdoc/>
    public int Rank => 0;
    /// <inheritdoc/>
    public int Size => 1;
    /// <inheritdoc/>
    public void SumInRankOrder(Span<float> data) { }
    /// <inheritdoc/>
    public double SumInRankOrder(double value) => value;
    /// <inheritdoc/>
    public void Broadcast(Span<byte> data, int root) { }
    /// <inheritdoc/>
    public void Barrier() { }
}
