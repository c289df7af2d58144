// The MPI world of a process started by an MPI launcher (mpirun, srun, an MPI operator): a thin binding of
// the eight MPI calls data-parallel training needs, loaded at run time from the system's libmpi so that a
// process started without a launcher neither needs nor loads MPI. The binding targets Open MPI's ABI (its
// handles are addresses of exported objects such as ompi_mpi_comm_world); Debian's openmpi-bin provides it.
//
// The ordered sum (docs/architecture.md "Scale-out"): the buffer is cut into Size equal slices; MPI_Alltoall
// sends slice j of every rank to rank j, which adds the Size copies in rank order; MPI_Allgather returns the
// summed slices to everyone. Every element is summed by one rank in the order 0, 1, …, Size−1, so the result
// is bit-identical on every rank and independent of timing, unlike MPI_Allreduce whose order the standard
// leaves open. Each rank sends and receives 2·(Size−1)/Size of the buffer, as a ring allreduce does.
using System.Runtime.InteropServices;

namespace TaylorCalibrate.Backend.Mpi;

/// <summary>An MPI call failed, or MPI is needed and cannot be loaded.</summary>
public sealed class MpiException(string message) : Exception(message);

/// <summary>This process's MPI world. Dispose calls MPI_Finalize.</summary>
public sealed unsafe class MpiWorld : ICollectives, IDisposable
{
    // Open MPI's libraries in the order tried: the versioned soname first (present without the -dev package).
    static readonly string[] LibraryNames = ["libmpi.so.40", "libmpi.so"];

    // Elements per MPI call: counts are C ints.
    const int MaxCount = 1 << 28;

    readonly nint world, mpiByte, mpiFloat, mpiDouble;
    readonly delegate* unmanaged<nint, int*, int> commRank, commSize;
    readonly delegate* unmanaged<void*, int, nint, void*, int, nint, nint, int> alltoall, allgather;
    readonly delegate* unmanaged<void*, int, nint, int, nint, int> bcast;
    readonly delegate* unmanaged<nint, int> barrier;
    readonly delegate* unmanaged<nint, int, int> abort;
    readonly delegate* unmanaged<int> finalize;
    bool finalized;

    /// <inheritdoc/>
    public int Rank { get; }
    /// <inheritdoc/>
    public int Size { get; }
    /// <summary>The rank among the ranks of this node (the launcher's local rank; Rank when it gives none):
    /// which entry of a per-node device list this rank uses.</summary>
    public int LocalRank { get; }
    /// <summary>The library that was loaded.</summary>
    public string Library { get; }

    /// <summary>Whether an MPI launcher started this process (Open MPI, PMIx, PMI or Slurm's srun).</summary>
    public static bool LaunchedByMpi =>
        Env("OMPI_COMM_WORLD_SIZE") is not null || Env("PMIX_RANK") is not null || Env("PMI_RANK") is not null;

    static string? Env(string name) => Environment.GetEnvironmentVariable(name) is { Length: > 0 } v ? v : null;

    /// <summary>The world when a launcher started this process, else null (a single process, MPI not loaded).</summary>
    /// <exception cref="MpiException">Started by a launcher but Open MPI's libmpi cannot be loaded or initialised.</exception>
    public static MpiWorld? StartIfLaunched() => LaunchedByMpi ? new MpiWorld() : null;

    MpiWorld()
    {
        var (handle, name) = Load();
        Library = name;
        nint Fn(string f) => NativeLibrary.TryGetExport(handle, f, out var p) ? p
            : throw new MpiException($"{name} has no {f}: an MPI library other than Open MPI? (expected Debian's openmpi-bin / libopenmpi3)");
        world = Fn("ompi_mpi_comm_world");
        mpiByte = Fn("ompi_mpi_byte");
        mpiFloat = Fn("ompi_mpi_float");
        mpiDouble = Fn("ompi_mpi_double");
        var init = (delegate* unmanaged<int*, byte***, int>)Fn("MPI_Init");
        var initialized = (delegate* unmanaged<int*, int>)Fn("MPI_Initialized");
        commRank = (delegate* unmanaged<nint, int*, int>)Fn("MPI_Comm_rank");
        commSize = (delegate* unmanaged<nint, int*, int>)Fn("MPI_Comm_size");
        alltoall = (delegate* unmanaged<void*, int, nint, void*, int, nint, nint, int>)Fn("MPI_Alltoall");
        allgather = (delegate* unmanaged<void*, int, nint, void*, int, nint, nint, int>)Fn("MPI_Allgather");
        bcast = (delegate* unmanaged<void*, int, nint, int, nint, int>)Fn("MPI_Bcast");
        barrier = (delegate* unmanaged<nint, int>)Fn("MPI_Barrier");
        abort = (delegate* unmanaged<nint, int, int>)Fn("MPI_Abort");
        finalize = (delegate* unmanaged<int>)Fn("MPI_Finalize");
        int flag = 0;
        Check(initialized(&flag), "MPI_Initialized");
        if (flag == 0) Check(init(null, null), "MPI_Init");
        int r = 0, s = 0;
        Check(commRank(world, &r), "MPI_Comm_rank");
        Check(commSize(world, &s), "MPI_Comm_size");
        Rank = r;
        Size = s;
        LocalRank = int.TryParse(Env("OMPI_COMM_WORLD_LOCAL_RANK") ?? Env("SLURM_LOCALID") ?? Env("MPI_LOCALRANKID"), out var lr) ? lr : r;
    }

    static (nint, string) Load()
    {
        foreach (var name in LibraryNames)
        {
            // RTLD_GLOBAL: Open MPI's plugins (dlopen'ed by libmpi) resolve libmpi's own symbols globally.
            var h = dlopen(name, RtldNow | RtldGlobal);
            if (h != 0) return (h, name);
        }
        throw new MpiException("started by an MPI launcher, but Open MPI's libmpi.so.40 cannot be loaded (on Debian: apt-get install -y openmpi-bin)");
    }

    const int RtldNow = 2, RtldGlobal = 0x100;
    [DllImport("libc", EntryPoint = "dlopen")]
    static extern nint dlopen(string file, int mode);

    static void Check(int code, string call)
    {
        if (code != 0) throw new MpiException($"{call} failed with MPI error code {code}");
    }

    /// <inheritdoc/>
    public void SumInRankOrder(Span<float> data)
    {
        if (Size == 1 || data.Length == 0) return;
        // Slices of `slice` elements, the last padded with zeros (padding adds nothing).
        long slice = (data.Length + Size - 1) / Size;
        for (long first = 0; first < slice; first += MaxCount / Size)
        {
            int piece = (int)Math.Min(MaxCount / Size, slice - first);
            var send = new float[(long)piece * Size];
            for (int j = 0; j < Size; j++)
            {
                long from = j * slice + first;
                long n = Math.Clamp(data.Length - from, 0, piece);
                if (n > 0) data.Slice((int)from, (int)n).CopyTo(send.AsSpan(j * piece, (int)n));
            }
            var recv = new float[(long)piece * Size];
            fixed (float* s = send, r = recv)
                Check(alltoall(s, piece, mpiFloat, r, piece, mpiFloat, world), "MPI_Alltoall");
            // recv holds this rank's slice from ranks 0..Size−1 in rank order.
            var mine = new float[piece];
            Array.Copy(recv, 0, mine, 0, piece);
            for (int j = 1; j < Size; j++)
                for (int i = 0; i < piece; i++) mine[i] += recv[(long)j * piece + i];
            fixed (float* m = mine, g = send)
                Check(allgather(m, piece, mpiFloat, g, piece, mpiFloat, world), "MPI_Allgather");
            for (int j = 0; j < Size; j++)
            {
                long to = j * slice + first;
                long n = Math.Clamp(data.Length - to, 0, piece);
                if (n > 0) send.AsSpan(j * piece, (int)n).CopyTo(data.Slice((int)to, (int)n));
            }
        }
    }

    /// <inheritdoc/>
    public double SumInRankOrder(double value)
    {
        if (Size == 1) return value;
        var all = new double[Size];
        fixed (double* a = all)
            Check(allgather(&value, 1, mpiDouble, a, 1, mpiDouble, world), "MPI_Allgather");
        double sum = 0;
        foreach (var v in all) sum += v;
        return sum;
    }

    /// <inheritdoc/>
    public void Broadcast(Span<byte> data, int root)
    {
        if (Size == 1) return;
        for (int first = 0; first < data.Length; first += MaxCount)
        {
            int n = Math.Min(MaxCount, data.Length - first);
            fixed (byte* p = data.Slice(first, n))
                Check(bcast(p, n, mpiByte, root, world), "MPI_Bcast");
        }
    }

    /// <inheritdoc/>
    public void Barrier() => Check(barrier(world), "MPI_Barrier");

    /// <summary>Stops every rank of the job with <paramref name="exitCode"/> (MPI_Abort): what a rank that
    /// failed does, so the others do not wait for it forever. Does not return.</summary>
    public void Abort(int exitCode)
    {
        abort(world, exitCode);
        Environment.Exit(exitCode);
    }

    /// <summary>MPI_Finalize.</summary>
    public void Dispose()
    {
        if (finalized) return;
        finalized = true;
        finalize();
    }
}
