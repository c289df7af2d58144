// Parallel loops of the CPU backend. Work is always cut by shape (fixed chunk sizes), never by the number
// of threads, so every op gives bit-identical results whatever the thread count; only the scheduling of
// the chunks onto threads varies.
namespace TaylorCalibrate.Backend.Cpu;

/// <summary>Parallel.For with a thread cap, plus chunking helpers for element and row loops.</summary>
internal sealed class CpuParallel(int threads)
{
    /// <summary>Below this many elements (or flops/4) a loop runs on the calling thread: starting
    /// workers costs a few microseconds, more than a small op takes.</summary>
    public const long SerialBelow = 1 << 15;

    /// <summary>Elements per chunk of an elementwise loop (64 KiB of floats: L2-friendly, big enough to
    /// amortise a task).</summary>
    public const int ElementChunk = 1 << 14;

    /// <summary>A helper that runs everything on the calling thread (for work nested inside a parallel loop).</summary>
    public static readonly CpuParallel Serial = new(1);

    readonly ParallelOptions options = new() { MaxDegreeOfParallelism = threads };

    /// <summary>Maximum number of threads a loop uses.</summary>
    public int Threads => threads;

    /// <summary>Runs body(i) for i in [0, count), on several threads when <paramref name="work"/> (a rough
    /// element or flop count of the whole loop) is large enough to pay for them.</summary>
    public void For(int count, long work, Action<int> body)
    {
        if (count <= 0) return;
        if (count == 1 || threads == 1 || work < SerialBelow)
        {
            for (int i = 0; i < count; i++) body(i);
            return;
        }
        System.Threading.Tasks.Parallel.For(0, count, options, body);
    }

    /// <summary>Splits [0, n) into chunks of <see cref="ElementChunk"/> elements and runs
    /// body(start, length) for each, in parallel when n is large.</summary>
    public void ForChunks(long n, Action<int, int> body)
    {
        int chunks = checked((int)((n + ElementChunk - 1) / ElementChunk));
        For(chunks, n, c =>
        {
            int start = c * ElementChunk;
            body(start, (int)Math.Min(ElementChunk, n - start));
        });
    }

    /// <summary>Splits <paramref name="rows"/> rows of <paramref name="cols"/> elements into blocks of
    /// about <see cref="ElementChunk"/> elements and runs body(firstRow, rowCount) for each.</summary>
    public void ForRows(int rows, int cols, Action<int, int> body)
    {
        int perBlock = RowsPerBlock(cols);
        int blocks = (rows + perBlock - 1) / perBlock;
        For(blocks, (long)rows * cols, b =>
        {
            int first = b * perBlock;
            body(first, Math.Min(perBlock, rows - first));
        });
    }

    /// <summary>Rows per block of <see cref="ForRows"/>: a shape-only choice (see the file comment).</summary>
    public static int RowsPerBlock(int cols) => Math.Max(1, ElementChunk / Math.Max(1, cols));
}
