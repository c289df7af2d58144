// Packing for the blocked GEMM: copies a block of op(A) or op(B) into the order the micro-kernel reads,
// so the kernel's inner loop walks memory contiguously whatever the transpose flags and leading dims.
// MR and NR are the tile of the kernel in use (6×16 or 12×32, MicroKernels.Geometry).
//   packed A block (mc × kc): micro-panels of MR rows; panel p holds, for each k, rows p·MR .. p·MR+MR−1
//                             (dst[p·MR·kc + k·MR + r]); rows past mc are zero.
//   packed B block (kc × nc): micro-panels of NR columns; panel q holds, for each k, columns q·NR .. +NR−1
//                             (dst[q·NR·kc + k·NR + j]); columns past nc are zero.
// Zero padding lets every tile run the full kernel; the store then keeps only the valid corner.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace TaylorCalibrate.Backend.Cpu.Gemm;

/// <summary>
/// One GEMM operand as stored: element (row, col) of op(X) is Data[Offset + row·Ld + col], or
/// Data[Offset + col·Ld + row] when <see cref="Trans"/>.
/// </summary>
internal readonly record struct GemmOperand(float[] Data, long Offset, int Ld, bool Trans)
{
    /// <summary>The same operand with op(X)'s column index shifted by <paramref name="k0"/> (for A, whose
    /// columns are the reduction index) — used by split-K.</summary>
    public GemmOperand ShiftCols(int k0) => this with { Offset = Offset + (Trans ? (long)k0 * Ld : k0) };

    /// <summary>The same operand with op(X)'s row index shifted by <paramref name="k0"/> (for B).</summary>
    public GemmOperand ShiftRows(int k0) => this with { Offset = Offset + (Trans ? k0 : (long)k0 * Ld) };
}

/// <summary>Packs blocks of op(A) and op(B) into micro-panels.</summary>
internal static unsafe class GemmPacking
{
    /// <summary>Packs op(A)[i0 .. i0+mc, k0 .. k0+kc] into ⌈mc/MR⌉ micro-panels of <paramref name="MR"/> rows
    /// at <paramref name="dst"/>.</summary>
    public static void PackA(in GemmOperand a, float* data, int i0, int mc, int k0, int kc, int MR, float* dst)
    {
        for (int p0 = 0; p0 < mc; p0 += MR, dst += MR * kc)
        {
            int mr = Math.Min(MR, mc - p0);
            if (a.Trans)
            {
                // op(A)[i, k] = data[k·Ld + i]: each k contributes mr contiguous values.
                float* src = data + a.Offset + (long)k0 * a.Ld + i0 + p0;
                for (int k = 0; k < kc; k++, src += a.Ld)
                {
                    int r = 0;
                    for (; r < mr; r++) dst[k * MR + r] = src[r];
                    for (; r < MR; r++) dst[k * MR + r] = 0;
                }
            }
            else
            {
                // op(A)[i, k] = data[i·Ld + k]: read each row contiguously, write with stride MR.
                for (int r = 0; r < MR; r++)
                {
                    if (r < mr)
                    {
                        float* src = data + a.Offset + (long)(i0 + p0 + r) * a.Ld + k0;
                        for (int k = 0; k < kc; k++) dst[k * MR + r] = src[k];
                    }
                    else
                        for (int k = 0; k < kc; k++) dst[k * MR + r] = 0;
                }
            }
        }
    }

    /// <summary>Packs the micro-panels <paramref name="firstPanel"/> .. <paramref name="endPanel"/>−1 of
    /// op(B)[k0 .. k0+kc, j0 .. j0+nc] into <paramref name="dst"/> (the whole block's buffer).</summary>
    public static void PackB(in GemmOperand b, float* data, int k0, int kc, int j0, int nc, int firstPanel, int endPanel,
                             int NR, float* dst)
    {
        for (int q = firstPanel; q < endPanel; q++)
        {
            float* panel = dst + (long)q * NR * kc;
            int jq = q * NR, nr = Math.Min(NR, nc - jq);
            if (!b.Trans)
            {
                // op(B)[k, j] = data[k·Ld + j]: NR contiguous values per k.
                float* src = data + b.Offset + (long)k0 * b.Ld + j0 + jq;
                if (nr == NR)
                    for (int k = 0; k < kc; k++, src += b.Ld)
                        for (int j = 0; j < NR; j += 8)
                            Vector256.Store(Vector256.Load(src + j), panel + k * NR + j);
                else
                    for (int k = 0; k < kc; k++, src += b.Ld)
                    {
                        int j = 0;
                        for (; j < nr; j++) panel[k * NR + j] = src[j];
                        for (; j < NR; j++) panel[k * NR + j] = 0;
                    }
            }
            else
            {
                // op(B)[k, j] = data[j·Ld + k]: the stored rows are columns of op(B). Full groups of 8 columns
                // go through 8×8 register transposes (x·Wᵀ packs every weight this way, once per call); the
                // rest reads each stored row contiguously and writes with stride NR.
                int j8 = Avx.IsSupported ? nr / 8 * 8 : 0, k8 = kc / 8 * 8;
                for (int j = 0; j < j8; j += 8)
                {
                    float* src = data + b.Offset + (long)(j0 + jq + j) * b.Ld + k0;
                    for (int k = 0; k < k8; k += 8) Transpose8x8(src + k, b.Ld, panel + k * NR + j, NR);
                    for (int k = k8; k < kc; k++)
                        for (int jj = 0; jj < 8; jj++) panel[k * NR + j + jj] = src[(long)jj * b.Ld + k];
                }
                for (int j = j8; j < NR; j++)
                {
                    if (j < nr)
                    {
                        float* src = data + b.Offset + (long)(j0 + jq + j) * b.Ld + k0;
                        for (int k = 0; k < kc; k++) panel[k * NR + j] = src[k];
                    }
                    else
                        for (int k = 0; k < kc; k++) panel[k * NR + j] = 0;
                }
            }
        }
    }

    /// <summary>dst[r·ldd + c] = src[c·lds + r] for an 8×8 block (AVX: unpack, shuffle, then swap 128-bit halves).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Transpose8x8(float* src, long lds, float* dst, int ldd)
    {
        var r0 = Avx.LoadVector256(src);           var r1 = Avx.LoadVector256(src + lds);
        var r2 = Avx.LoadVector256(src + 2 * lds); var r3 = Avx.LoadVector256(src + 3 * lds);
        var r4 = Avx.LoadVector256(src + 4 * lds); var r5 = Avx.LoadVector256(src + 5 * lds);
        var r6 = Avx.LoadVector256(src + 6 * lds); var r7 = Avx.LoadVector256(src + 7 * lds);
        var t0 = Avx.UnpackLow(r0, r1); var t1 = Avx.UnpackHigh(r0, r1);
        var t2 = Avx.UnpackLow(r2, r3); var t3 = Avx.UnpackHigh(r2, r3);
        var t4 = Avx.UnpackLow(r4, r5); var t5 = Avx.UnpackHigh(r4, r5);
        var t6 = Avx.UnpackLow(r6, r7); var t7 = Avx.UnpackHigh(r6, r7);
        var u0 = Avx.Shuffle(t0, t2, 0x44); var u1 = Avx.Shuffle(t0, t2, 0xEE);
        var u2 = Avx.Shuffle(t1, t3, 0x44); var u3 = Avx.Shuffle(t1, t3, 0xEE);
        var u4 = Avx.Shuffle(t4, t6, 0x44); var u5 = Avx.Shuffle(t4, t6, 0xEE);
        var u6 = Avx.Shuffle(t5, t7, 0x44); var u7 = Avx.Shuffle(t5, t7, 0xEE);
        Avx.Store(dst, Avx.Permute2x128(u0, u4, 0x20));
        Avx.Store(dst + ldd, Avx.Permute2x128(u1, u5, 0x20));
        Avx.Store(dst + 2 * ldd, Avx.Permute2x128(u2, u6, 0x20));
        Avx.Store(dst + 3 * ldd, Avx.Permute2x128(u3, u7, 0x20));
        Avx.Store(dst + 4 * ldd, Avx.Permute2x128(u0, u4, 0x31));
        Avx.Store(dst + 5 * ldd, Avx.Permute2x128(u1, u5, 0x31));
        Avx.Store(dst + 6 * ldd, Avx.Permute2x128(u2, u6, 0x31));
        Avx.Store(dst + 7 * ldd, Avx.Permute2x128(u3, u7, 0x31));
    }
}
