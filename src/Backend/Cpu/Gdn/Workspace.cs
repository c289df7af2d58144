// Per-thread reusable scratch arrays for the sequence kernels (Gdn/, Attention/). A GDN call needs a few MiB
// per (batch, head) item (gathered inputs, saved chunk intermediates, gradients); allocating them fresh each
// call put them on the large-object heap, and the page faults and zeroing of new pages cost about as much
// as the matrix products (measured with perf). Arrays are kept per worker thread and grown on demand, so a
// thread holds at most the largest buffers it has needed; their contents are arbitrary on return.
namespace TaylorCalibrate.Backend.Cpu;

internal static class Workspace
{
    /// <summary>One buffer per role; buffers of different slots never alias.</summary>
    public enum Slot
    {
        HeadQ, HeadK, HeadV, HeadG, HeadBeta, HeadRstdQ, HeadRstdK, HeadH0,
        GradQ, GradK, GradV, GradG, GradBeta, GradH0,
        Output, State, DState, Upstream, UpstreamState,
        SavedGamma, SavedA, SavedW, SavedVNew, SavedH,
        Checkpoints, Replay, Scratch, ScratchBackward, Tile,
        Count,
    }

    [ThreadStatic] static float[]?[]? slots;

    /// <summary>A buffer of at least <paramref name="length"/> floats, reused by this thread; contents arbitrary.</summary>
    public static float[] Get(Slot slot, long length)
    {
        slots ??= new float[(int)Slot.Count][];
        var a = slots[(int)slot];
        if (a is null || a.Length < length)
            slots[(int)slot] = a = GC.AllocateUninitializedArray<float>(checked((int)Math.Max(length, 1)));
        return a;
    }
}
