/// Naive double-precision reference of IBackend.Gemm (docs/kernels.md §1; layout rules: GemmSpec in Specs.cs).
/// Per batch entry b: C_b = α·op(A_b)·op(B_b) + β·C_b, op(A) [M,K], op(B) [K,N], C [M,N]. A is stored [M,K]
/// with row stride lda (or [K,M] when TransA), B [K,N] with ldb (or [N,K] when TransB), C [M,N] with ldc;
/// A_b starts at OffsetA + b·StrideA (likewise B, C). Leading dimensions of 0 mean packed; strides of 0 mean
/// the packed matrix size (rows as stored × resolved leading dimension). Elements of the C buffer that no
/// batch entry addresses are left as they are.
module TaylorCalibrate.Tests.Reference.Gemm

open TaylorCalibrate.Backend

/// Resolved leading dimensions and batch strides (re-derived from the documentation, not from GemmSpec's
/// own resolved properties, so a mistake there shows up as a mismatch).
type Layout =
    { Lda: int; Ldb: int; Ldc: int; StrideA: int64; StrideB: int64; StrideC: int64 }

let layout (s: GemmSpec) =
    let lda = if s.Lda <> 0 then s.Lda elif s.TransA then s.M else s.K
    let ldb = if s.Ldb <> 0 then s.Ldb elif s.TransB then s.K else s.N
    let ldc = if s.Ldc <> 0 then s.Ldc else s.N
    let rowsA = if s.TransA then s.K else s.M
    let rowsB = if s.TransB then s.N else s.K
    { Lda = lda; Ldb = ldb; Ldc = ldc
      StrideA = (if s.StrideA <> 0L then s.StrideA else int64 rowsA * int64 lda)
      StrideB = (if s.StrideB <> 0L then s.StrideB else int64 rowsB * int64 ldb)
      StrideC = (if s.StrideC <> 0L then s.StrideC else int64 s.M * int64 ldc) }

/// Buffer index of op(A)[i,p] in batch entry b.
let indexA (s: GemmSpec) (l: Layout) (b: int) (i: int) (p: int) =
    int (s.OffsetA + int64 b * l.StrideA + (if s.TransA then int64 p * int64 l.Lda + int64 i else int64 i * int64 l.Lda + int64 p))

/// Buffer index of op(B)[p,j] in batch entry b.
let indexB (s: GemmSpec) (l: Layout) (b: int) (p: int) (j: int) =
    int (s.OffsetB + int64 b * l.StrideB + (if s.TransB then int64 j * int64 l.Ldb + int64 p else int64 p * int64 l.Ldb + int64 j))

/// Buffer index of C[i,j] in batch entry b.
let indexC (s: GemmSpec) (l: Layout) (b: int) (i: int) (j: int) =
    int (s.OffsetC + int64 b * l.StrideC + int64 i * int64 l.Ldc + int64 j)

/// Elements each buffer must hold for the spec: the last addressed element + 1 (indices grow with every
/// coordinate, so the last element is that of the last batch entry's last row and column).
let extents (s: GemmSpec) =
    let l = layout s
    if s.M = 0 || s.N = 0 then 0, 0, 0
    elif s.K = 0 then 0, 0, indexC s l (s.Batch - 1) (s.M - 1) (s.N - 1) + 1
    else
        indexA s l (s.Batch - 1) (s.M - 1) (s.K - 1) + 1,
        indexB s l (s.Batch - 1) (s.K - 1) (s.N - 1) + 1,
        indexC s l (s.Batch - 1) (s.M - 1) (s.N - 1) + 1

/// Which elements of a C buffer of `length` elements the spec writes.
let addressedC (s: GemmSpec) (length: int) =
    let l = layout s
    let mask = Array.zeroCreate length
    for b in 0 .. s.Batch - 1 do
        for i in 0 .. s.M - 1 do
            for j in 0 .. s.N - 1 do
                mask[indexC s l b i j] <- true
    mask

/// The C buffer after the op: C_b = α·op(A_b)·op(B_b) + β·C_b, other elements unchanged.
let forward (s: GemmSpec) (a: float[]) (b: float[]) (c: float[]) : float[] =
    let l = layout s
    let alpha, beta = float s.Alpha, float s.Beta
    let out = Array.copy c
    for bi in 0 .. s.Batch - 1 do
        for i in 0 .. s.M - 1 do
            for j in 0 .. s.N - 1 do
                let mutable acc = 0.0
                for p in 0 .. s.K - 1 do
                    acc <- acc + a[indexA s l bi i p] * b[indexB s l bi p j]
                let ic = indexC s l bi i j
                out[ic] <- alpha * acc + beta * c[ic]
    out

/// Reverse mode of `forward` for the loss Σ dOut ⊙ forward(a, b, c): gradients with respect to the whole a,
/// b and c buffers (dC is β·dOut where C is addressed and dOut elsewhere). For Y = X·Wᵀ this is the familiar
/// dX = dY·W, dW = dYᵀ·X.
let backward (s: GemmSpec) (a: float[]) (b: float[]) (c: float[]) (dOut: float[]) : float[] * float[] * float[] =
    let l = layout s
    let alpha, beta = float s.Alpha, float s.Beta
    let da = Array.zeroCreate a.Length
    let db = Array.zeroCreate b.Length
    let dc = Array.copy dOut
    let addressed = addressedC s c.Length
    for i in 0 .. dc.Length - 1 do
        if addressed[i] then dc[i] <- beta * dOut[i]
    for bi in 0 .. s.Batch - 1 do
        for i in 0 .. s.M - 1 do
            for j in 0 .. s.N - 1 do
                let g = alpha * dOut[indexC s l bi i j]
                for p in 0 .. s.K - 1 do
                    let ia, ib = indexA s l bi i p, indexB s l bi p j
                    da[ia] <- da[ia] + g * b[ib]
                    db[ib] <- db[ib] + g * a[ia]
    da, db, dc
