// Blocked, packed, multi-threaded fp32 GEMM:  C = α·op(A)·op(B) + β·C  (docs/kernels.md §1).
// Goto/BLIS loop nest, for each batch entry:
//   for jc in N step NC:                       a column block of C
//     for rounds of K (up to 16 MiB of packed B):
//       pack op(B)[round, jc..] in KC×nc blocks (parallel; shared read-only by all tasks, in L3)
//       parallel over tasks (row block of ~MC rows × range of B micro-panels), each:
//         for pc in round step KC:             the first K block applies β, later ones accumulate (β = 1)
//           pack op(A)[rows, pc..]             A block mc×kc stays in L2
//           for each B micro-panel (kc×NR): for each A micro-panel (kc×MR): MR×NR micro-kernel
// MR, NR, KC and MC belong to the kernel in use (6×16 or 12×32, MicroKernels.Geometry).
// Packing a whole round of K before the tasks start keeps thread barriers to two per round.
// Each element of C sums its K products in the same order whatever the tasks are, so the result does
// not depend on the thread count. Weight-gradient shapes (huge K, few output tiles) instead split K into
// up to 8 ranges chosen from the shape alone, compute them in parallel into private buffers and add those
// in a fixed order (llama.cpp's split-K rule, docs/kernels.md §1).
using System.Buffers;
using static TaylorCalibrate.Backend.Cpu.Gemm.MicroKernels;

namespace TaylorCalibrate.Backend.Cpu.Gemm;

/// <summary>The CPU GEMM driver: blocking, packing, threading and split-K around the micro-kernels.</summary>
internal static unsafe class BlockedGemm
{
    /// <summary>Reduction block of the split-K ranges (every kernel's KC divides it).</summary>
    public const int KC = 256;
    /// <summary>Rows of an A block in the split-K rule (a shape-only choice, the same for every kernel).</summary>
    public const int MC = 96;
    /// <summary>Columns of a B block: KC×NC floats = 4 MiB in the shared L3.</summary>
    public const int NC = 4096;

    /// <summary>Floats of packed B per round (16 MiB); see <see cref="Blocked"/>.</summary>
    const int BPackBudget = 1 << 22;

    /// <summary>Products below this many flops (~20 µs of work) run on the calling thread: waking
    /// workers would cost more than it saves.</summary>
    const double ParallelFlops = 1 << 21;

    /// <summary>Batch entries with fewer flops than this run one per thread instead of each in parallel.</summary>
    const long SmallEntryFlops = 1 << 22;

    /// <summary>Computes a whole (batched) GEMM. Arguments are trusted: the backend validated them.</summary>
    public static void Run(float[] a, float[] b, float[] c, GemmSpec s, CpuParallel workers, GemmKernelKind kind)
    {
        if (s.M == 0 || s.N == 0 || s.Batch <= 0) return;
        var opA = new GemmOperand(a, s.OffsetA, s.LdaResolved, s.TransA);
        var opB = new GemmOperand(b, s.OffsetB, s.LdbResolved, s.TransB);
        long strideA = s.StrideAResolved, strideB = s.StrideBResolved, strideC = s.StrideCResolved;
        int ldc = s.LdcResolved;
        double entryFlops = 2.0 * s.M * s.N * s.K;

        void Entry(int i, CpuParallel par) => Single(
            opA with { Offset = opA.Offset + i * strideA }, opB with { Offset = opB.Offset + i * strideB },
            c, s.OffsetC + i * strideC, ldc, s.M, s.N, s.K, s.Alpha, s.Beta, par, kind);

        if (s.Batch > 1 && entryFlops < SmallEntryFlops)
            workers.For(s.Batch, (long)(entryFlops * s.Batch / 4), i => Entry(i, CpuParallel.Serial));
        else
            for (int i = 0; i < s.Batch; i++) Entry(i, workers);
    }

    /// <summary>One matrix product, C = α·op(A)·op(B) + β·C, C at <paramref name="cOffset"/> with row stride ldc.</summary>
    public static void Single(GemmOperand a, GemmOperand b, float[] c, long cOffset, int ldc,
                              int m, int n, int k, float alpha, float beta, CpuParallel workers, GemmKernelKind kind)
    {
        if (m == 0 || n == 0) return;
        if (k == 0 || alpha == 0)
        {
            ScaleC(c, cOffset, ldc, m, n, beta);       // BLAS semantics: A and B are not read
            return;
        }
        var par = 2.0 * m * n * k < ParallelFlops ? CpuParallel.Serial : workers;
        int splits = SplitCount(m, n, k);
        if (splits > 1)              // also on one thread: the split is part of the result's definition
            SplitK(a, b, c, cOffset, ldc, m, n, k, alpha, beta, splits, par, kind);
        else
            Blocked(a, b, c, cOffset, ldc, m, n, k, alpha, beta, par, kind);
    }

    /// <summary>Split-K factor from the shape alone: only when K is long (≥ 2048) and the output has fewer
    /// than four (MC × 128) tiles, so plain tiling could not keep the cores busy. At most 8 ranges.</summary>
    public static int SplitCount(int m, int n, int k)
    {
        if (k < 2048) return 1;
        long tiles = (long)((m + MC - 1) / MC) * ((n + 127) / 128);
        return tiles >= 4 ? 1 : Math.Min(8, k / 1024);
    }

    static void ScaleC(float[] c, long cOffset, int ldc, int m, int n, float beta)
    {
        for (int i = 0; i < m; i++)
        {
            var row = c.AsSpan(checked((int)(cOffset + (long)i * ldc)), n);
            if (beta == 0) row.Clear();
            else if (beta != 1) System.Numerics.Tensors.TensorPrimitives.Multiply(row, beta, row);
        }
    }

    static void Blocked(GemmOperand a, GemmOperand b, float[] c, long cOffset, int ldc,
                        int m, int n, int k, float alpha, float beta, CpuParallel par, GemmKernelKind kind)
    {
        var (MR, NR, KC, MC) = Geometry(kind);     // the kernel's sizes (hide the split-K rule's KC, MC)
        int threads = par.Threads;
        // Row blocks: about MC rows each, and a multiple of the thread count when there are several, so
        // the last round of tasks does not leave a core idle (1024 rows: 12 blocks of 90, not 11 of 96).
        int rowBlocks = (m + MC - 1) / MC;
        if (threads > 1 && rowBlocks >= threads) rowBlocks = (rowBlocks + threads - 1) / threads * threads;
        int mc = ((m + rowBlocks - 1) / rowBlocks + MR - 1) / MR * MR;
        rowBlocks = (m + mc - 1) / mc;
        int aPackSize = mc * KC;

        int ncMax = Math.Min(n, NC);
        int ncPadded = (ncMax + NR - 1) / NR * NR;
        // K blocks packed per round: as many as fit the budget, so long reductions (weight gradients)
        // need few rounds and therefore few thread barriers.
        int kRound = Math.Max(KC, BPackBudget / ncPadded / KC * KC);
        float[] bPack = ArrayPool<float>.Shared.Rent(ncPadded * Math.Min(kRound, (k + KC - 1) / KC * KC));
        try
        {
            for (int jc = 0; jc < n; jc += NC)
            {
                int nc = Math.Min(NC, n - jc);
                int panels = (nc + NR - 1) / NR;
                // Few row blocks (small M): also split the columns so every thread gets work.
                int colSplits = rowBlocks >= 2 * threads ? 1 : Math.Min(panels, (2 * threads + rowBlocks - 1) / rowBlocks);
                int tasks = rowBlocks * colSplits;
                for (int pr = 0; pr < k; pr += kRound)
                {
                    int kBlocks = (Math.Min(kRound, k - pr) + KC - 1) / KC;
                    // Pack op(B)[pr .. pr + kBlocks·KC, jc .. jc + nc]: K block kb at bPack + kb·KC·ncPadded.
                    int packSplits = Math.Min(panels, threads);
                    par.For(kBlocks * packSplits, (long)kBlocks * KC * nc, t =>
                    {
                        int kb = t / packSplits, part = t % packSplits, k0 = pr + kb * KC;
                        fixed (float* pb = b.Data, pbp = bPack)
                            GemmPacking.PackB(b, pb, k0, Math.Min(KC, k - k0), jc, nc,
                                              part * panels / packSplits, (part + 1) * panels / packSplits, NR, pbp + (long)kb * KC * ncPadded);
                    });

                    par.For(tasks, 2L * m * nc * kBlocks * KC, t =>
                    {
                        int i0 = t / colSplits * mc, cs = t % colSplits;
                        int rows = Math.Min(mc, m - i0);
                        float[] aPack = ArrayPool<float>.Shared.Rent(aPackSize);
                        try
                        {
                            fixed (float* pa = a.Data, pap = aPack, pbp = bPack, pcc = c)
                                for (int kb = 0; kb < kBlocks; kb++)
                                {
                                    int k0 = pr + kb * KC, kc = Math.Min(KC, k - k0);
                                    GemmPacking.PackA(a, pa, i0, rows, k0, kc, MR, pap);
                                    Macro(pap, pbp + (long)kb * KC * ncPadded, pcc + cOffset + (long)i0 * ldc + jc, ldc, rows, nc, kc,
                                          cs * panels / colSplits, (cs + 1) * panels / colSplits, alpha, k0 == 0 ? beta : 1f, kind, MR, NR);
                                }
                        }
                        finally { ArrayPool<float>.Shared.Return(aPack); }
                    });
                }
            }
        }
        finally { ArrayPool<float>.Shared.Return(bPack); }
    }

    /// <summary>The two innermost loops: B micro-panels q0..q1−1 (each reused from L1 across every A
    /// micro-panel) times all A micro-panels of a packed block; c points at the block's top-left element.</summary>
    static void Macro(float* aPack, float* bPack, float* c, long ldc, int rows, int cols, int kc,
                      int q0, int q1, float alpha, float beta, GemmKernelKind kind, int MR, int NR)
    {
        var kernel = Get(kind);
        float* tile = stackalloc float[MaxTile];
        for (int q = q0; q < q1; q++)
        {
            float* bPanel = bPack + (long)q * NR * kc;
            int j = q * NR, nr = Math.Min(NR, cols - j);
            for (int p = 0; p < rows; p += MR)
            {
                float* aPanel = aPack + (long)p * kc;
                float* cTile = c + p * ldc + j;
                int mr = Math.Min(MR, rows - p);
                if (mr == MR && nr == NR)
                    kernel(kc, aPanel, bPanel, cTile, ldc, alpha, beta);
                else
                {
                    kernel(kc, aPanel, bPanel, tile, NR, 1f, 0f);
                    StorePartial(tile, NR, cTile, ldc, mr, nr, alpha, beta);
                }
            }
        }
    }

    /// <summary>Split-K: ranges of K (multiples of KC) into private M×N buffers in parallel, then
    /// C = α·Σ_s part_s + β·C with the parts added in range order.</summary>
    static void SplitK(GemmOperand a, GemmOperand b, float[] c, long cOffset, int ldc,
                       int m, int n, int k, float alpha, float beta, int splits, CpuParallel par, GemmKernelKind kind)
    {
        int chunk = ((k + splits - 1) / splits + KC - 1) / KC * KC;
        splits = (k + chunk - 1) / chunk;
        int size = m * n;
        var parts = new float[splits][];
        for (int s = 0; s < splits; s++) parts[s] = ArrayPool<float>.Shared.Rent(size);
        try
        {
            par.For(splits, 2L * m * n * k, s =>
            {
                int k0 = s * chunk;
                Blocked(a.ShiftCols(k0), b.ShiftRows(k0), parts[s], 0, n, m, n, Math.Min(chunk, k - k0), 1f, 0f,
                        CpuParallel.Serial, kind);
            });
            par.ForRows(m, n, (first, count) =>
            {
                for (int i = first; i < first + count; i++)
                {
                    long row = cOffset + (long)i * ldc;
                    for (int j = 0; j < n; j++)
                    {
                        float sum = parts[0][i * n + j];
                        for (int s = 1; s < splits; s++) sum += parts[s][i * n + j];
                        c[row + j] = beta == 0 ? alpha * sum : alpha * sum + beta * c[row + j];
                    }
                }
            });
        }
        finally
        {
            foreach (var p in parts) ArrayPool<float>.Shared.Return(p);
        }
    }
}
