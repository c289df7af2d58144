/// Every op of the backend contract (IBackend) writes only inside its outputs: guard tensors allocated just before and
/// after the op's own tensors must keep their bits. Lavapipe drops out-of-bounds writes to a buffer, but a
/// backend that sub-allocates tensors from one block would silently corrupt a neighbour (docs/kernels.md §5-6),
/// so this is checked on every backend with odd sizes (not multiples of any workgroup or vector width).
module TaylorCalibrate.Tests.Ops.BoundsTests

open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Tests
open TaylorCalibrate.Tests.Numeric

let private pattern = Array.init 4099 (fun i -> float32 i * 0.5f + 0.25f)

/// Allocates a guard, lets `setup` allocate the op's tensors (returning the op and the tensors), allocates a
/// second guard, runs the op and checks both guards.
let private guarded (be: IBackend) (setup: IBackend -> (unit -> unit) * Tensor list) =
    use before = be.FromArray(pattern, pattern.Length)
    let run, owned = setup be
    try
        use after = be.FromArray(pattern, pattern.Length)
        run ()
        bitEqual pattern (before.ToArray()) "guard allocated before the op's tensors"
        bitEqual pattern (after.ToArray()) "guard allocated after the op's tensors"
    finally
        for t in owned do t.Dispose()

let private f32 (be: IBackend) seed (shape: int[]) = be.FromArray(Rand.normal seed 1.0 (Array.fold (*) 1 shape), shape)

let private cases : (string * (IBackend -> (unit -> unit) * Tensor list)) list =
    [ "Gemm 7x13x5 TN", fun be ->
        let a, b, c = f32 be 1 [| 5; 7 |], f32 be 2 [| 5; 13 |], f32 be 3 [| 7; 13 |]
        (fun () -> be.Gemm(a, b, c, GemmSpec(7, 13, 5, true, false, 1.0f, 1.0f))), [ a; b; c ]
      "Add 5x129", fun be ->
        let a, b, y = f32 be 1 [| 5; 129 |], f32 be 2 [| 5; 129 |], f32 be 3 [| 5; 129 |]
        (fun () -> be.Add(a, b, y)), [ a; b; y ]
      "Axpy 645", fun be ->
        let x, y = f32 be 1 [| 645 |], f32 be 2 [| 645 |]
        (fun () -> be.Axpy(0.5f, x, y)), [ x; y ]
      "Unary Softplus and backward 5x129", fun be ->
        let x, y, dy, dx = f32 be 1 [| 5; 129 |], f32 be 2 [| 5; 129 |], f32 be 3 [| 5; 129 |], f32 be 4 [| 5; 129 |]
        (fun () -> be.Unary(UnaryOp.Softplus, x, y); be.UnaryBackward(UnaryOp.Softplus, x, dy, dx)), [ x; y; dy; dx ]
      "SwiGlu backward 5x129", fun be ->
        let ts = [ for s in 1 .. 5 -> f32 be s [| 5; 129 |] ]
        (fun () -> be.SwiGlu(ts[0], ts[1], ts[2]); be.SwiGluBackward(ts[0], ts[1], ts[2], ts[3], ts[4])), ts
      "RmsNorm and backward 5x129", fun be ->
        let x, w, y, rstd = f32 be 1 [| 5; 129 |], f32 be 2 [| 129 |], f32 be 3 [| 5; 129 |], f32 be 4 [| 5 |]
        let dy, dx, dw = f32 be 5 [| 5; 129 |], f32 be 6 [| 5; 129 |], f32 be 7 [| 129 |]
        (fun () -> be.RmsNorm(x, w, y, rstd, 1e-5f); be.RmsNormBackward(dy, x, w, rstd, dx, dw)), [ x; w; y; rstd; dy; dx; dw ]
      "L2Norm and backward 5x129", fun be ->
        let x, y, rstd, dy, dx = f32 be 1 [| 5; 129 |], f32 be 2 [| 5; 129 |], f32 be 3 [| 5 |], f32 be 4 [| 5; 129 |], f32 be 5 [| 5; 129 |]
        (fun () -> be.L2Norm(x, y, rstd, 129, 1e-6f); be.L2NormBackward(dy, y, rstd, dx, 129)), [ x; y; rstd; dy; dx ]
      "Rope 1x5x3x6 both layouts", fun be ->
        let struct (c, s) = RopeTables.Build(5, 6, 10000.0)
        let x, y = f32 be 1 [| 1; 5; 3; 6 |], f32 be 2 [| 1; 5; 3; 6 |]
        let cos, sin = be.FromArray(c, 5, 3), be.FromArray(s, 5, 3)
        (fun () -> be.Rope(x, cos, sin, y, RopeLayout.HalfSplit, false); be.Rope(x, cos, sin, y, RopeLayout.Adjacent, true)), [ x; y; cos; sin ]
      "Embedding and backward V=50 D=7 N=33", fun be ->
        let table, ids, y = f32 be 1 [| 50; 7 |], be.FromInts(Rand.ints 2 50 33, 33), f32 be 3 [| 33; 7 |]
        (fun () -> be.Embedding(table, ids, y); be.EmbeddingBackward(ids, y, table)), [ table; ids; y ]
      "Softmax and backward 5x129", fun be ->
        let x, y, dy, dx = f32 be 1 [| 5; 129 |], f32 be 2 [| 5; 129 |], f32 be 3 [| 5; 129 |], f32 be 4 [| 5; 129 |]
        (fun () -> be.Softmax(x, y, 129); be.SoftmaxBackward(y, dy, dx, 129)), [ x; y; dy; dx ]
      "CrossEntropy aliased N=5 V=1031", fun be ->
        let z, t, loss = f32 be 1 [| 5; 1031 |], be.FromInts([| 3; -1; 1030; 0; 7 |], 5), f32 be 2 [| 5 |]
        (fun () -> be.CrossEntropy(z, t, loss, z, 0.25f)), [ z; t; loss ]
      "KlDivergence N=5 V=1031", fun be ->
        let te, st, loss, ds = f32 be 1 [| 5; 1031 |], f32 be 2 [| 5; 1031 |], f32 be 3 [| 5 |], f32 be 4 [| 5; 1031 |]
        (fun () -> be.KlDivergence(te, st, loss, ds, 0.2f)), [ te; st; loss; ds ]
      "Reduce 4099 (all ops)", fun be ->
        let x, r = f32 be 1 [| 4099 |], f32 be 2 [| 1 |]
        (fun () -> for op in [ ReduceOp.Sum; ReduceOp.Mean; ReduceOp.SumOfSquares; ReduceOp.MaxAbs ] do be.Reduce(op, x, r)), [ x; r ]
      "AdamW 1031", fun be ->
        let ts = [ for s in 1 .. 4 -> f32 be s [| 1031 |] ]
        be.Fill(ts[3], 1.0f)
        (fun () -> be.AdamW(ts[0], ts[1], ts[2], ts[3], AdamWSpec(0.01f, 3))), ts
      "ClipGradNorm 3 tensors", fun be ->
        let g1, g2, g3, norm = f32 be 1 [| 7 |], f32 be 2 [| 1031 |], f32 be 3 [| 129 |], f32 be 4 [| 1 |]
        (fun () -> be.ClipGradNorm(ResizeArray [ g1; g2; g3 ], 0.5f, norm)), [ g1; g2; g3; norm ] ]

[<Tests>]
let tests =
    // Sequenced: the backends are shared by the whole run and are not thread-safe (one caller at a time).
    testSequenced <| testList "Ops.Bounds" [
        for h in Backends.all ->
            testList h.Name [
                for name, setup in cases ->
                    test $"{name} writes only its outputs" { guarded (h.Get()) setup } ] ]
