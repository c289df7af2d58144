/// Sanity tests of the Vulkan backend's infrastructure (memory, hazards, batching, split bindings) and of the
/// GEMM tails, against naive double loops. The full f64-reference op tests live in the other Ops/ files and
/// run on every backend; these exercise Vulkan-only paths. Shapes are small: lavapipe runs on the CPU.
/// Sequenced: the backend is shared by the whole run and is not thread-safe.
module TaylorCalibrate.Tests.Ops.VulkanInfraTests

open System
open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Backend.Vulkan
open TaylorCalibrate.Tests

/// Float32 round-off of fp32 accumulation over short sums, as max |Δ| or relative RMS.
let private fp32Rel = 1e-5
let private fp32Abs = 1e-5

let private vk () = Backends.vulkan.Get() :?> VulkanBackend

let private upload (be: IBackend) (a: float32[]) (shape: int list) = be.FromArray(a, List.toArray shape)

/// Runs `f` with the binding limit lowered to `bytes`, so the split paths run on small tensors.
let private withBindingLimit (be: VulkanBackend) (bytes: uint64) f =
    be.Synchronize()
    be.MaxBindingBytes <- bytes
    try f () finally be.Synchronize(); be.MaxBindingBytes <- 0UL

[<Tests>]
let memory =
    testSequenced <| testList "VulkanInfra memory" [
        test "upload/download round trip, F32 and I32, odd sizes" {
            let be = vk ()
            for n in [ 0; 1; 7; 1000; 70001 ] do
                let a = Rand.normal n 1.0 n
                use t = upload be a [ n ]
                Expect.equal (t.ToArray()) a $"f32 n={n}"
                let ids = Rand.ints n 1000 n
                use ti = be.FromInts(ids, n)
                Expect.equal (ti.ToIntArray()) ids $"i32 n={n}"
        }
        test "allocate zero-fills; fill and copy (also overlapping within one tensor)" {
            let be = vk ()
            use t = be.Allocate [| 5; 3 |]
            Expect.equal (t.ToArray()) (Array.zeroCreate 15) "zeros"
            be.Fill(t, 2.5f)
            Expect.equal (t.ToArray()) (Array.create 15 2.5f) "fill"
            let a = Array.init 20 float32
            use s = upload be a [ 20 ]
            be.Copy(s, 3L, t, 1L, 10L)
            let got = t.ToArray()
            Expect.equal got[1..10] a[3..12] "copy"
            Expect.equal got[0] 2.5f "before copy untouched"
            be.Copy(s, 0L, s, 2L, 10L)
            let sa = s.ToArray()
            Expect.equal sa[2..11] a[0..9] "overlapping copy"
        }
        test "upload while queued work still reads the old contents (staging path)" {
            let be = vk ()
            let n = 513
            let a, b = Rand.normal 1 1.0 n, Rand.normal 2 1.0 n
            use x = upload be a [ n ]
            use y = be.Allocate [| n |]
            use z = be.Allocate [| n |]
            be.Scale(x, 2.0f, y)           // queued, not yet run
            be.Upload(x, ReadOnlySpan b)  // must not overtake the scale
            be.Scale(x, 3.0f, z)
            Expect.equal (y.ToArray()) (a |> Array.map (fun v -> 2.0f * v)) "y from old x"
            Expect.equal (z.ToArray()) (b |> Array.map (fun v -> 3.0f * v)) "z from new x"
        }
        test "disposing a tensor with queued work defers the free" {
            let be = vk ()
            use y = be.Allocate [| 300 |]
            for i in 1 .. 5 do
                use x = upload be (Array.create 300 (float32 i)) [ 300 ]
                be.Axpy(1.0f, x, y)
            Expect.equal (y.ToArray()) (Array.create 300 15.0f) "sum of 1..5"
        }
    ]

[<Tests>]
let recording =
    testSequenced <| testList "VulkanInfra recording" [
        test "250 dependent dispatches: barriers on hazards, several batches" {
            let be = vk ()
            let r = be.Recorder
            be.Synchronize()
            let n = 1000
            let a = Rand.normal 3 1.0 n
            use x = upload be a [ n ]
            use y = be.Allocate [| n |]
            let submits0, barriers0 = r.Submits, r.Barriers
            for _ in 1 .. 250 do be.Axpy(0.5f, x, y)
            let got = y.ToArray()
            let expected = a |> Array.map (fun v -> float v * 125.0)
            Numeric.close fp32Rel fp32Abs expected got "y = 125 x"
            Expect.isGreaterThanOrEqual (r.Submits - submits0) 3L "submitted in several batches"
            Expect.isGreaterThanOrEqual (r.Barriers - barriers0) 249L "a barrier between dependent axpys"
        }
        test "independent dispatches need no barrier" {
            let be = vk ()
            let r = be.Recorder
            use x = upload be (Rand.normal 4 1.0 64) [ 64 ]
            let ys = [ for _ in 1 .. 10 -> be.Allocate [| 64 |] ]
            be.Synchronize()
            let barriers0 = r.Barriers
            for y in ys do be.Scale(x, 2.0f, y)
            be.Synchronize()
            Expect.equal (r.Barriers - barriers0) 0L "reads of x and writes of distinct y are hazard-free"
            for y in ys do y.Dispose()
        }
        test "profile returns a positive device time" {
            let be = vk ()
            use x = upload be (Rand.normal 5 1.0 4096) [ 4096 ]
            use y = be.Allocate [| 4096 |]
            let s = be.Profile(fun () -> for _ in 1 .. 3 do be.Axpy(1.0f, x, y))
            Expect.isGreaterThan s 0.0 "seconds"
            let per = be.ProfileDispatches(fun () -> be.Scale(x, 2.0f, y))
            Expect.equal per.Count 1 "one dispatch"
            Expect.stringContains per[0].Kernel "elementwise" "kernel name"
        }
    ]

[<Tests>]
let elementwise =
    testSequenced <| testList "VulkanInfra elementwise" [
        test "unary ops and derivatives vs double formulas" {
            let be = vk ()
            let n = 777
            let x = Rand.uniform 6 -8.0 8.0 n
            let xp = x |> Array.map abs |> Array.map (fun v -> v + 0.1f)
            let dy = Rand.normal 7 1.0 n
            let sg (v: float) = 1.0 / (1.0 + exp -v)
            let cases: (UnaryOp * float32[] * (float -> float) * (float -> float)) list =
                [ UnaryOp.Silu, x, (fun v -> v * sg v), (fun v -> sg v * (1.0 + v * (1.0 - sg v)))
                  UnaryOp.Sigmoid, x, sg, (fun v -> sg v * (1.0 - sg v))
                  UnaryOp.Softplus, x, (fun v -> max v 0.0 + log (1.0 + exp (-(abs v)))), sg
                  UnaryOp.Exp, x, exp, exp
                  UnaryOp.Log, xp, log, (fun v -> 1.0 / v) ]
            for op, input, f, df in cases do
                use tx = upload be input [ n ]
                use tdy = upload be dy [ n ]
                use ty = be.Allocate [| n |]
                be.Unary(op, tx, ty)
                Numeric.close 1e-6 1e-5 (input |> Array.map (float >> f)) (ty.ToArray()) $"{op}"
                be.UnaryBackward(op, tx, tdy, ty)
                Numeric.close 1e-6 1e-5 (Array.map2 (fun v d -> float d * df (float v)) input dy) (ty.ToArray()) $"{op}'"
        }
        test "split bindings: add, axpy, swiglu backward across 4 KiB chunks" {
            let be = vk ()
            let n = 5003
            let a, b, d = Rand.normal 8 1.0 n, Rand.normal 9 1.0 n, Rand.normal 10 1.0 n
            withBindingLimit be 4096UL (fun () ->
                use ta = upload be a [ n ]
                use tb = upload be b [ n ]
                use td = upload be d [ n ]
                use y = be.Allocate [| n |]
                be.Add(ta, tb, y)
                Expect.equal (y.ToArray()) (Array.map2 (+) a b) "add"
                be.Axpy(2.0f, ta, y)
                Expect.equal (y.ToArray()) (Array.map2 (fun x y -> y + 2.0f * x) a (Array.map2 (+) a b)) "axpy"
                use da = be.Allocate [| n |]
                use db = be.Allocate [| n |]
                be.SwiGluBackward(ta, tb, td, da, db)
                let sg (v: float) = 1.0 / (1.0 + exp -v)
                let eda = Array.init n (fun i -> let v = float a[i] in float d[i] * float b[i] * sg v * (1.0 + v * (1.0 - sg v)))
                let edb = Array.init n (fun i -> let v = float a[i] in float d[i] * v * sg v)
                Numeric.close 1e-6 1e-5 eda (da.ToArray()) "da"
                Numeric.close 1e-6 1e-5 edb (db.ToArray()) "db")
        }
    ]

/// Naive double-precision C = α·op(A)·op(B) + β·C over the whole batch, following GemmSpec's layout rules.
let private gemmRef (s: GemmSpec) (a: float32[]) (b: float32[]) (c: float32[]) =
    let out = Array.map float c
    for z in 0 .. s.Batch - 1 do
        for m in 0 .. s.M - 1 do
            for n in 0 .. s.N - 1 do
                let mutable acc = 0.0
                for k in 0 .. s.K - 1 do
                    let ai = s.OffsetA + int64 z * s.StrideAResolved + (if s.TransA then int64 k * int64 s.LdaResolved + int64 m else int64 m * int64 s.LdaResolved + int64 k)
                    let bi = s.OffsetB + int64 z * s.StrideBResolved + (if s.TransB then int64 n * int64 s.LdbResolved + int64 k else int64 k * int64 s.LdbResolved + int64 n)
                    acc <- acc + float a[int ai] * float b[int bi]
                let ci = int (s.OffsetC + int64 z * s.StrideCResolved + int64 m * int64 s.LdcResolved + int64 n)
                out[ci] <- float s.Alpha * acc + (if s.Beta = 0.0f then 0.0 else float s.Beta * float c[ci])
    out

let private runGemm (be: VulkanBackend) (s: GemmSpec) seed =
    let na, nb, nc = int s.ExtentA + 3, int s.ExtentB + 5, int s.ExtentC + 2
    let a, b = Rand.normal seed 1.0 na, Rand.normal (seed + 1) 1.0 nb
    let c = Rand.normal (seed + 2) 1.0 nc
    use ta = upload be a [ na ]
    use tb = upload be b [ nb ]
    use tc = upload be c [ nc ]
    be.Gemm(ta, tb, tc, s)
    Numeric.close 1e-6 1e-4 (gemmRef s a b c) (tc.ToArray()) $"{be.GemmVariant} {s}"

[<Tests>]
let gemm =
    testSequenced <| testList "VulkanInfra gemm" [
        for variant in [ GemmKernel.Registers; GemmKernel.Tiled ] do
            yield test $"{variant}: odd shapes, every transpose, alpha/beta, batch with strides, offsets, leading dims" {
                let be = vk ()
                let saved = be.GemmVariant
                be.GemmVariant <- variant
                try
                    for ta in [ false; true ] do
                    for tb in [ false; true ] do
                        runGemm be (GemmSpec(37, 53, 29, ta, tb)) 11
                        runGemm be (GemmSpec(1, 1, 1, ta, tb, Alpha = 2.0f, Beta = 0.5f)) 12
                        runGemm be (GemmSpec(65, 9, 130, ta, tb, Alpha = -1.5f, Beta = 1.0f)) 13
                        // batch 3, padded leading dimensions, explicit strides and offsets (not multiples of 4)
                        let lda, ldb, ldc = (if ta then 37 else 29) + 3, (if tb then 29 else 53) + 1, 53 + 2
                        let sa, sb, sc = int64 (lda * (if ta then 29 else 37)) + 7L, int64 (ldb * (if tb then 53 else 29)) + 1L, int64 (ldc * 37) + 5L
                        runGemm be (GemmSpec(37, 53, 29, ta, tb, 0.75f, 0.25f, 3, lda, ldb, ldc, sa, sb, sc, 5L, 2L, 1L)) 14
                    runGemm be (GemmSpec(8, 8, 0, Beta = 0.5f)) 15      // K = 0: C = β·C
                    runGemm be (GemmSpec(128, 96, 64)) 16              // aligned, full tiles: vec4 paths
                finally be.GemmVariant <- saved
            }
        yield test "beta = 0 ignores NaN in C" {
            let be = vk ()
            use ta = upload be (Array.create 12 1.0f) [ 12 ]
            use tb = upload be (Array.create 12 1.0f) [ 12 ]
            use tc = upload be (Array.create 9 nanf) [ 9 ]
            be.Gemm(ta, tb, tc, GemmSpec(3, 3, 4))
            Expect.equal (tc.ToArray()) (Array.create 9 4.0f) "C = A·B"
        }
        yield test "batch chunks when the batch exceeds one binding" {
            let be = vk ()
            withBindingLimit be 4096UL (fun () -> runGemm be (GemmSpec(10, 12, 9, Batch = 20)) 17)
        }
        yield test "operands larger than one binding are cut along M, N or K" {
            let be = vk ()
            withBindingLimit be 4096UL (fun () ->
                for ta in [ false; true ] do
                for tb in [ false; true ] do
                    runGemm be (GemmSpec(40, 50, 45, ta, tb, Alpha = 1.5f, Beta = 0.5f)) 18)
        }
    ]

// ---- quick op sanity checks against inline double formulas (the full references live in the op tests) ----

let private rowsOf (a: float32[]) cols = Array.chunkBySize cols a |> Array.map (Array.map float)

[<Tests>]
let ops =
    testSequenced <| testList "VulkanInfra ops" [
        test "rmsnorm forward/backward, dw accumulates; rows > one dw block" {
            let be = vk ()
            let rows, cols, eps = 300, 37, 1e-5
            let x, w, dy = Rand.normal 20 1.0 (rows * cols), Rand.normal 21 1.0 cols, Rand.normal 22 1.0 (rows * cols)
            let dw0 = Rand.normal 23 1.0 cols
            use tx = upload be x [ rows; cols ]
            use tw = upload be w [ cols ]
            use tdy = upload be dy [ rows; cols ]
            use ty = be.Allocate [| rows; cols |]
            use tr = be.Allocate [| rows |]
            use tdx = be.Allocate [| rows; cols |]
            use tdw = upload be dw0 [ cols ]
            be.RmsNorm(tx, tw, ty, tr, float32 eps)
            be.RmsNormBackward(tdy, tx, tw, tr, tdx, tdw)
            let xr, dyr = rowsOf x cols, rowsOf dy cols
            let r = xr |> Array.map (fun row -> 1.0 / sqrt (Array.averageBy (fun v -> v * v) row + eps))
            let ey = Array.init (rows * cols) (fun i -> float w[i % cols] * xr[i / cols][i % cols] * r[i / cols])
            let edx =
                Array.init (rows * cols) (fun i ->
                    let ri, c = i / cols, i % cols
                    let mean = Array.init cols (fun j -> float w[j] * dyr[ri][j] * xr[ri][j]) |> Array.average
                    r[ri] * float w[c] * dyr[ri][c] - xr[ri][c] * r[ri] ** 3.0 * mean)
            let edw = Array.init cols (fun c -> float dw0[c] + Array.sum (Array.init rows (fun ri -> dyr[ri][c] * xr[ri][c] * r[ri])))
            Numeric.close 1e-5 1e-5 ey (ty.ToArray()) "y"
            Numeric.close 1e-5 1e-5 r (tr.ToArray()) "rstd"
            Numeric.close 1e-5 1e-5 edx (tdx.ToArray()) "dx"
            Numeric.close 1e-5 1e-4 edw (tdw.ToArray()) "dw"
        }
        test "l2norm and softmax, forward/backward" {
            let be = vk ()
            let rows, cols = 5, 129
            let x, dy = Rand.normal 30 2.0 (rows * cols), Rand.normal 31 1.0 (rows * cols)
            use tx = upload be x [ rows; cols ]
            use tdy = upload be dy [ rows; cols ]
            use ty = be.Allocate [| rows; cols |]
            use tr = be.Allocate [| rows |]
            use tdx = be.Allocate [| rows; cols |]
            be.L2Norm(tx, ty, tr, cols, 1e-6f)
            let xr, dyr = rowsOf x cols, rowsOf dy cols
            let r = xr |> Array.map (fun row -> 1.0 / sqrt (Array.sumBy (fun v -> v * v) row + 1e-6))
            let y = Array.init (rows * cols) (fun i -> xr[i / cols][i % cols] * r[i / cols])
            Numeric.close 1e-6 1e-6 y (ty.ToArray()) "l2 y"
            be.L2NormBackward(tdy, ty, tr, tdx, cols)
            let dot = Array.init rows (fun ri -> Array.init cols (fun c -> dyr[ri][c] * y[ri * cols + c]) |> Array.sum)
            Numeric.close 1e-5 1e-6 (Array.init (rows * cols) (fun i -> r[i / cols] * (dyr[i / cols][i % cols] - dot[i / cols] * y[i]))) (tdx.ToArray()) "l2 dx"
            be.Softmax(tx, ty, cols)
            let p = xr |> Array.collect (fun row -> let m = Array.max row in let e = row |> Array.map (fun v -> exp (v - m)) in e |> Array.map (fun v -> v / Array.sum e))
            Numeric.close 1e-5 1e-7 p (ty.ToArray()) "softmax"
            be.SoftmaxBackward(ty, tdy, tdx, cols)
            let pd = Array.init rows (fun ri -> Array.init cols (fun c -> p[ri * cols + c] * dyr[ri][c]) |> Array.sum)
            Numeric.close 1e-5 1e-7 (Array.init (rows * cols) (fun i -> p[i] * (float dy[i] - pd[i / cols]))) (tdx.ToArray()) "softmax dx"
        }
        test "rope both layouts, inverse undoes forward" {
            let be = vk ()
            let b, t, h, d = 2, 5, 3, 6
            let x = Rand.normal 40 1.0 (b * t * h * d)
            let struct (cos, sin) = RopeTables.Build(t, d, 10000.0)
            use tc = upload be cos [ t; d / 2 ]
            use ts = upload be sin [ t; d / 2 ]
            for layout in [ RopeLayout.HalfSplit; RopeLayout.Adjacent ] do
                use tx = upload be x [ b; t; h; d ]
                use ty = be.Allocate [| b; t; h; d |]
                be.Rope(tx, tc, ts, ty, layout, false)
                let e = Array.zeroCreate (x.Length)
                for row in 0 .. b * t * h - 1 do
                    let pos = (row / h) % t
                    for i in 0 .. d / 2 - 1 do
                        let i0, i1 = (if layout = RopeLayout.Adjacent then row * d + 2 * i, row * d + 2 * i + 1 else row * d + i, row * d + i + d / 2)
                        let c, s = float cos[pos * (d / 2) + i], float sin[pos * (d / 2) + i]
                        e[i0] <- float x[i0] * c - float x[i1] * s
                        e[i1] <- float x[i0] * s + float x[i1] * c
                Numeric.close 1e-6 1e-6 e (ty.ToArray()) $"{layout}"
                be.Rope(ty, tc, ts, ty, layout, true)
                Numeric.close 1e-6 1e-6 (Array.map float x) (ty.ToArray()) $"{layout} inverse in place"
        }
        test "embedding gather and deterministic scatter-add" {
            let be = vk ()
            let v, d, n = 11, 7, 40
            let table = Rand.normal 50 1.0 (v * d)
            // Repeated ids exercise the ordered scatter-add; out-of-range ids are input errors (Ops/EmbeddingTests.fs).
            let ids = Array.init n (fun i -> (i * 7) % 5)
            let dy = Rand.normal 51 1.0 (n * d)
            use tt = upload be table [ v; d ]
            use ti = be.FromInts(ids, n)
            use ty = be.Allocate [| n; d |]
            be.Embedding(tt, ti, ty)
            let e = Array.init (n * d) (fun k -> let id = ids[k / d] in if id >= 0 && id < v then float table[id * d + k % d] else 0.0)
            Numeric.close 0.0 0.0 e (ty.ToArray()) "gather"
            use tdy = upload be dy [ n; d ]
            be.EmbeddingBackward(ti, tdy, tt)
            let acc = Array.copy table
            for i in 0 .. n - 1 do
                if ids[i] >= 0 && ids[i] < v then
                    for c in 0 .. d - 1 do acc[ids[i] * d + c] <- acc[ids[i] * d + c] + dy[i * d + c]
            Expect.equal (tt.ToArray()) acc "scatter-add equals the sequential fp32 loop bit for bit"
        }
        test "cross-entropy and KL, gradients in place" {
            let be = vk ()
            let rows, v = 4, 301
            let z, s = Rand.normal 60 3.0 (rows * v), Rand.normal 61 3.0 (rows * v)
            let targets = [| 5; -1; 300; 0 |]
            let lse (row: float[]) = let m = Array.max row in m + log (Array.sumBy (fun x -> exp (x - m)) row)
            let zr, sr = rowsOf z v, rowsOf s v
            use tz = upload be z [ rows; v ]
            use tt = be.FromInts(targets, rows)
            use tl = be.Allocate [| rows |]
            be.CrossEntropy(tz, tt, tl, Some tz |> Option.toObj, 0.5f)
            let el = Array.init rows (fun r -> if targets[r] < 0 then 0.0 else lse zr[r] - zr[r][targets[r]])
            Numeric.close 1e-6 1e-5 el (tl.ToArray()) "ce loss"
            let ed = Array.init (rows * v) (fun i -> let r, c = i / v, i % v in if targets[r] < 0 then 0.0 else 0.5 * (exp (zr[r][c] - lse zr[r]) - (if c = targets[r] then 1.0 else 0.0)))
            Numeric.close 1e-5 1e-6 ed (tz.ToArray()) "ce dlogits in place"
            use tz2 = upload be z [ rows; v ]
            use ts = upload be s [ rows; v ]
            be.KlDivergence(tz2, ts, tl, ts, 2.0f)
            let ekl = Array.init rows (fun r -> Array.init v (fun c -> let lt, ls = zr[r][c] - lse zr[r], sr[r][c] - lse sr[r] in exp lt * (lt - ls)) |> Array.sum)
            Numeric.close 1e-5 1e-5 ekl (tl.ToArray()) "kl loss"
            let eds = Array.init (rows * v) (fun i -> let r, c = i / v, i % v in 2.0 * (exp (sr[r][c] - lse sr[r]) - exp (zr[r][c] - lse zr[r])))
            Numeric.close 1e-5 1e-6 eds (ts.ToArray()) "kl dstudent in place"
        }
        test "reductions, deterministic, also split; adamw; clip" {
            let be = vk ()
            let n = 70001
            let x = Rand.normal 70 1.0 n
            use tx = upload be x [ n ]
            use r = be.Allocate [| 1 |]
            let run op = be.Reduce(op, tx, r); (r.ToArray())[0]
            let xd = Array.map float x
            Numeric.close 1e-6 1e-4 [| Array.sum xd |] [| run ReduceOp.Sum |] "sum"
            Numeric.close 1e-6 1e-7 [| Array.average xd |] [| run ReduceOp.Mean |] "mean"
            Numeric.close 1e-6 1e-3 [| Array.sumBy (fun v -> v * v) xd |] [| run ReduceOp.SumOfSquares |] "sumsq"
            Expect.equal (run ReduceOp.MaxAbs) (Array.max (Array.map abs x)) "maxabs"
            Expect.equal (run ReduceOp.Sum) (run ReduceOp.Sum) "bitwise reproducible"
            withBindingLimit be 8192UL (fun () -> Numeric.close 1e-6 1e-4 [| Array.sum xd |] [| run ReduceOp.Sum |] "split sum")
            use empty = be.Allocate [| 0 |]
            be.Reduce(ReduceOp.MaxAbs, empty, r)
            Expect.equal (r.ToArray()) [| 0.0f |] "empty"
            // AdamW, two steps, vs the formula in double
            let p0, g = Rand.normal 71 1.0 100, Rand.normal 72 1.0 100
            use tp = upload be p0 [ 100 ]
            use tg = upload be g [ 100 ]
            use tm = be.Allocate [| 100 |]
            use tv = be.Allocate [| 100 |]
            let lr, wd, b1, b2, eps = 1e-2, 0.1, 0.9, 0.999, 1e-8
            let p, m, v = Array.map float p0, Array.zeroCreate 100, Array.zeroCreate 100
            for step in 1 .. 2 do
                be.AdamW(tp, tg, tm, tv, AdamWSpec(float32 lr, step, float32 wd))
                for i in 0 .. 99 do
                    let gi = float g[i]
                    p[i] <- p[i] * (1.0 - lr * wd)
                    m[i] <- b1 * m[i] + (1.0 - b1) * gi
                    v[i] <- b2 * v[i] + (1.0 - b2) * gi * gi
                    p[i] <- p[i] - lr * (m[i] / (1.0 - b1 ** float step)) / (sqrt (v[i] / (1.0 - b2 ** float step)) + eps)
            Numeric.close 1e-5 1e-6 p (tp.ToArray()) "adamw"
            // clip: two tensors, total norm above the limit
            use g1 = upload be (Array.create 30 1.0f) [ 30 ]
            use g2 = upload be (Array.create 6 2.0f) [ 6 ]
            use nrm = be.Allocate [| 1 |]
            be.ClipGradNorm([| g1; g2 |], 3.0f, nrm)
            let total = sqrt (30.0 + 24.0)
            Numeric.close 1e-6 1e-6 [| total |] (nrm.ToArray()) "norm"
            Numeric.close 1e-6 1e-6 (Array.create 30 (3.0 / (total + 1e-6))) (g1.ToArray()) "g1 scaled"
            be.ClipGradNorm([| g1 |], 100.0f, nrm)
            Numeric.close 1e-6 1e-6 (Array.create 30 (3.0 / (total + 1e-6))) (g1.ToArray()) "below the limit: unchanged"
        }
    ]

[<Tests>]
let splitK =
    testSequenced <| testList "VulkanInfra gemm split-K" [
        test "long K with few tiles: slices summed into α·ΣP + β·C, batch 2, offsets" {
            let be = vk ()
            let saved = be.SplitKCores
            be.SplitKCores <- 16
            try
                let d0 = be.Recorder.TotalDispatches
                runGemm be (GemmSpec(20, 30, 2100, TransA = true, Alpha = 0.5f, Beta = 1.0f)) 80
                // 2100 = 5 slices of 512 (8 requested, rounded to 256) + the reduction
                Expect.equal (be.Recorder.TotalDispatches - d0) 6L "split into 5 slices + 1 reduction"
                runGemm be (GemmSpec(9, 7, 2500, TransB = true, Batch = 2, OffsetA = 3L, OffsetC = 1L)) 81
            finally be.SplitKCores <- saved
        }
    ]

[<Tests>]
let pushConstants =
    test "VulkanInfra push-constant twins match their GLSL blocks (std430 scalars) and fit 128 bytes" {
        let size (t: Type) = Runtime.InteropServices.Marshal.SizeOf t
        let sizes =
            [ "GemmArgs", size typeof<GemmArgs>, 64; "SplitKArgs", size typeof<SplitKArgs>, 40; "ElementwiseArgs", size typeof<ElementwiseArgs>, 8
              "RowArgs", size typeof<RowArgs>, 16; "RopeArgs", size typeof<RopeArgs>, 24; "EmbeddingArgs", size typeof<EmbeddingArgs>, 12
              "LossArgs", size typeof<LossArgs>, 16; "ReduceArgs", size typeof<ReduceArgs>, 24; "AdamWArgs", size typeof<AdamWArgs>, 32 ]
        for name, actual, expected in sizes do
            Expect.equal actual expected name
            Expect.isLessThanOrEqual actual 128 $"{name} ≤ 128 B"
    }

[<Tests>]
let concurrency =
    test "VulkanInfra concurrent callers are serialised at op granularity" {
        let be = vk ()
        let results =
            Array.Parallel.init 4 (fun i ->
                let a = Rand.normal (90 + i) 1.0 999
                use x = upload be a [ 999 ]
                use y = be.Allocate [| 999 |]
                for _ in 1 .. 20 do be.Axpy(1.0f, x, y)
                Array.forall2 (fun (v: float32) (w: float32) -> abs (20.0f * v - w) <= 1e-4f * (1.0f + abs w)) a (y.ToArray()))
        Expect.allEqual results true "each thread's 20 axpys"
    }
