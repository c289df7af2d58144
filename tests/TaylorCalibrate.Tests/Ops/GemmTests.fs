/// IBackend.Gemm on every backend against the double reference (Reference/GemmReference.fs): odd shapes
/// with every transpose combination, α and β ≠ 0/1 (β = 1 is gradient accumulation), batches with leading
/// dimensions, strides and offsets (untouched elements of C must keep their bits), long K (split-K), and
/// argument errors. Maths: docs/kernels.md §1; layout: GemmSpec in Specs.cs.
module TaylorCalibrate.Tests.Ops.GemmTests

open System
open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Tests
open TaylorCalibrate.Tests.Numeric
open TaylorCalibrate.Tests.Reference

/// C, relative RMS error over the addressed elements. Each entry is a K-term fp32 dot product; with random
/// signs the rounding errors of a sequential sum grow like 2^-24·√K ≈ 6e-8·√K (blocked and split-K sums do
/// better), so allow 3e-7·√K (5× that) plus 1e-6 for the α, β roundings and β·C cancellations.
/// max |Δ| ≤ 1e-6 also passes (fla rule; only reachable for tiny K).
let private cTol (k: int) = { RelRms = fp32Accumulation 1e-6 3e-7 k; MaxAbs = 1e-6 }

/// Stored shape of A, B (as the op reads them) for a packed, unbatched spec.
let private shapeA (s: GemmSpec) = if s.TransA then [| s.K; s.M |] else [| s.M; s.K |]
let private shapeB (s: GemmSpec) = if s.TransB then [| s.N; s.K |] else [| s.K; s.N |]

/// Runs the op on buffers of the given shapes; returns the downloaded C buffer.
let private runGemm (be: IBackend) (spec: GemmSpec) (a: float32[], sa: int[]) (b: float32[], sb: int[]) (c: float32[], sc: int[]) =
    use ta = be.FromArray(a, sa)
    use tb = be.FromArray(b, sb)
    use tc = be.FromArray(c, sc)
    be.Gemm(ta, tb, tc, spec)
    tc.ToArray()

/// The elements of xs where mask is true.
let private maskOf (mask: bool[]) (xs: 'a[]) = xs |> Array.indexed |> Array.filter (fun (i, _) -> mask[i]) |> Array.map snd

/// Compares C with the reference on the addressed elements and demands the others keep their bits.
let private checkC (spec: GemmSpec) (a: float32[]) (b: float32[]) (c: float32[]) (actual: float32[]) =
    let expected = Gemm.forward spec (toDouble a) (toDouble b) (toDouble c)
    let addressed = Gemm.addressedC spec c.Length
    for i in 0 .. c.Length - 1 do
        if not addressed[i] && BitConverter.SingleToInt32Bits actual[i] <> BitConverter.SingleToInt32Bits c[i] then
            failtestf "C element %d is not addressed by the spec but changed from %g to %g" i c[i] actual[i]
    closeTo (cTol spec.K) (maskOf addressed expected) (maskOf addressed actual) "C"

let private plain (be: IBackend) (spec: GemmSpec) (seed: int) =
    let a = Rand.normal seed 1.0 (spec.M * spec.K)
    let b = Rand.normal (seed + 1) 1.0 (spec.K * spec.N)
    // β = 0 must ignore C's old contents: start from values that would show up if it did not
    let c = if spec.Beta = 0.0f then Array.create (spec.M * spec.N) 777.0f else Rand.normal (seed + 2) 1.0 (spec.M * spec.N)
    let actual = runGemm be spec (a, shapeA spec) (b, shapeB spec) (c, [| spec.M; spec.N |])
    checkC spec a b c actual

let private transposes = [ false, false; false, true; true, false; true, true ]
let private flags (ta, tb) = (if ta then "T" else "N") + (if tb then "T" else "N")

let private strided (be: IBackend) (spec: GemmSpec) (seed: int) =
    let ea, eb, ec = Gemm.extents spec
    // buffers a little longer than the spec needs: elements past the extent must not be touched either
    let a = Rand.normal seed 1.0 (ea + 3)
    let b = Rand.normal (seed + 1) 1.0 (eb + 3)
    let c = Rand.normal (seed + 2) 1.0 (ec + 3)
    let actual = runGemm be spec (a, [| a.Length |]) (b, [| b.Length |]) (c, [| c.Length |])
    checkC spec a b c actual

[<Tests>]
let tests =
    // Sequenced: the backends are shared by the whole run and are not thread-safe (one caller at a time).
    testSequenced <| testList "Ops.Gemm" [
        for h in Backends.all ->
            testList h.Name [
                testList "shapes" [
                    for m, n, k in [ 1, 1, 1; 7, 13, 5; 37, 53, 29; 65, 127, 33; 130, 67, 259; 1, 67, 259; 130, 1, 33 ] do
                    for t in transposes ->
                        test $"{m}x{n}x{k} {flags t}" { plain (h.Get()) (GemmSpec(m, n, k, fst t, snd t)) (m + n + k) } ]
                testList "alpha beta" [
                    for m, n, k in [ 37, 53, 29; 130, 67, 259 ] do
                    for alpha, beta in [ 0.5f, 1.0f; -1.25f, 0.75f; 2.0f, -1.0f ] do
                    for t in transposes ->
                        test $"{m}x{n}x{k} {flags t} alpha={alpha} beta={beta}" {
                            plain (h.Get()) (GemmSpec(m, n, k, fst t, snd t, alpha, beta)) (3 * m + k) } ]
                testList "long K (split-K, weight-gradient shape dW = dYᵀ·X)" [
                    for m, n, k in [ 5, 7, 3001; 33, 17, 4099 ] ->
                        test $"{m}x{n}x{k} TN beta=1" { plain (h.Get()) (GemmSpec(m, n, k, true, false, 1.0f, 1.0f)) k } ]
                testList "K = 0" [
                    for t in transposes ->
                        test $"7x13x0 {flags t} alpha=2 beta=0.5 scales C by beta" {
                            let be = h.Get()
                            let spec = GemmSpec(7, 13, 0, fst t, snd t, 2.0f, 0.5f)
                            let c = Rand.normal 5 1.0 91
                            // nothing of A and B is addressed; one-element buffers stand in for them
                            let actual = runGemm be spec ([| 1.0f |], [| 1 |]) ([| 1.0f |], [| 1 |]) (c, [| 7; 13 |])
                            checkC spec [| 1.0f |] [| 1.0f |] c actual } ]
                testList "batched" [
                    for m, n, k in [ 7, 13, 5; 37, 29, 53 ] do
                    for t in transposes do
                        let ta, tb = t
                        let lda = (if ta then m else k) + 3
                        let ldb = (if tb then k else n) + 1
                        let ldc = n + 2
                        let rowsA, rowsB = (if ta then k else m), (if tb then n else k)
                        yield test $"batch 3 {m}x{n}x{k} {flags t} padded leading dims, strides and offsets" {
                            let spec =
                                GemmSpec(m, n, k, ta, tb, 0.75f, 0.5f, 3, lda, ldb, ldc,
                                         int64 (rowsA * lda + 5), int64 (rowsB * ldb + 2), int64 (m * ldc + 7), 1L, 2L, 3L)
                            strided (h.Get()) spec (m * k) }
                        yield test $"batch 3 {m}x{n}x{k} {flags t} packed (strides 0)" {
                            strided (h.Get()) (GemmSpec(m, n, k, ta, tb, -1.0f, 0.0f, 3)) (m * k + 1) }
                        yield test $"batch 2 {m}x{n}x{k} {flags t} padded leading dims, default strides" {
                            strided (h.Get()) (GemmSpec(m, n, k, ta, tb, 1.0f, 1.0f, 2, lda, ldb, ldc)) (m * k + 2) } ]
                testList "errors" [
                    let spec = GemmSpec(7, 13, 5)
                    let data n = Array.zeroCreate<float32> n
                    let call (be: IBackend) (na: int) (nb: int) (nc: int) =
                        use a = be.FromArray(data na, na)
                        use b = be.FromArray(data nb, nb)
                        use c = be.FromArray(data nc, nc)
                        be.Gemm(a, b, c, spec)
                    test "A shorter than the spec addresses names 'a'" {
                        let be = h.Get()
                        Backends.expectArgumentError "a" "[34]" (fun () -> call be 34 65 91) "Gemm" }
                    test "B shorter than the spec addresses names 'b'" {
                        let be = h.Get()
                        Backends.expectArgumentError "b" "[64]" (fun () -> call be 35 64 91) "Gemm" }
                    test "C shorter than the spec addresses names 'c'" {
                        let be = h.Get()
                        Backends.expectArgumentError "c" "[90]" (fun () -> call be 35 65 90) "Gemm" }
                    test "an I32 A names 'a'" {
                        let be = h.Get()
                        use a = be.FromInts(Array.zeroCreate 35, 7, 5)
                        use b = be.FromArray(data 65, 5, 13)
                        use c = be.FromArray(data 91, 7, 13)
                        Backends.expectArgumentError "a" "" (fun () -> be.Gemm(a, b, c, spec)) "Gemm" }
                    // The same contract on every backend: C is written while A and B are read.
                    test "C aliasing A or B names 'c'" {
                        let be = h.Get()
                        use x = be.FromArray(data 64, 8, 8)
                        use y = be.FromArray(data 64, 8, 8)
                        let square = GemmSpec(8, 8, 8)
                        Backends.expectArgumentError "c" "" (fun () -> be.Gemm(x, y, x, square)) "Gemm c = a"
                        Backends.expectArgumentError "c" "" (fun () -> be.Gemm(x, y, y, square)) "Gemm c = b" } ] ] ]
