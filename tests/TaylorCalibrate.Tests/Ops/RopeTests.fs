/// IBackend.Rope on every backend against the double reference (Reference/RopeReference.fs): both pair
/// layouts, forward and inverse (the backward), in place, D not a power of two with D/2 odd, Llama-3
/// scaled tables at an offset start position, argument errors. Maths: docs/kernels.md §4 (RoPE).
module TaylorCalibrate.Tests.Ops.RopeTests

open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Tests
open TaylorCalibrate.Tests.Numeric
open TaylorCalibrate.Tests.Reference

/// y, relative RMS: each output is a two-term dot product of x with (cos, ∓sin) from the tables: two or
/// three roundings (≈ 1e-7 RMS), so 5e-7 allows a few ulp. No absolute escape.
let private ropeTol = { RelRms = 5e-7; MaxAbs = 0.0 }

/// (B, T, H, D) and whether the tables use Llama-3 scaling starting at position 1000.
let private cases = [ (1, 1, 1, 2), false; (2, 5, 3, 6), false; (1, 17, 4, 64), false; (2, 33, 3, 130), true ]

let private tables (t: int) (d: int) (scaled: bool) =
    let struct (cos, sin) =
        if scaled then RopeTables.Build(t, d, 500000.0, Llama3RopeScaling(8.0, 1.0, 4.0, 8192), 1000)
        else RopeTables.Build(t, d, 10000.0)
    cos, sin

let private ropeTests (h: Backends.BackendHandle) ((b, t, hh, d) as shape, scaled) =
    let dims = [| b; t; hh; d |]
    let n = b * t * hh * d
    let x = Rand.normal (n + d) 1.0 n
    let cos, sin = tables t d scaled
    let name = $"{b}x{t}x{hh}x{d}" + (if scaled then " llama3 tables from position 1000" else "")
    [ for layout in [ RopeLayout.HalfSplit; RopeLayout.Adjacent ] do
        for inverse in [ false; true ] do
            yield test $"{layout} inverse={inverse} {name}" {
                let be = h.Get()
                use tx = be.FromArray(x, dims)
                use tc = be.FromArray(cos, t, d / 2)
                use ts = be.FromArray(sin, t, d / 2)
                use y = be.FromArray(Array.create n 777.0f, dims)
                be.Rope(tx, tc, ts, y, layout, inverse)
                closeTo ropeTol (Rope.apply layout inverse shape (toDouble x) (toDouble cos) (toDouble sin)) (y.ToArray()) "y" }
        yield test $"{layout} in place {name}" {
            let be = h.Get()
            use tx = be.FromArray(x, dims)
            use tc = be.FromArray(cos, t, d / 2)
            use ts = be.FromArray(sin, t, d / 2)
            be.Rope(tx, tc, ts, tx, layout, false)
            closeTo ropeTol (Rope.apply layout false shape (toDouble x) (toDouble cos) (toDouble sin)) (tx.ToArray()) "y = x" } ]

let private errorTests (h: Backends.BackendHandle) =
    let make (be: IBackend) (shape: int[]) = be.FromArray(Array.zeroCreate (Array.fold (*) 1 shape), shape)
    [ test "cos of shape [T, D] instead of [T, D/2] names 'cos'" {
          let be = h.Get()
          use x = make be [| 1; 3; 2; 8 |]
          use cos = make be [| 3; 8 |]
          use sin = make be [| 3; 4 |]
          use y = make be [| 1; 3; 2; 8 |]
          Backends.expectArgumentError "cos" "[3,8]" (fun () -> be.Rope(x, cos, sin, y, RopeLayout.HalfSplit, false)) "Rope" }
      test "sin with too few positions names 'sin'" {
          let be = h.Get()
          use x = make be [| 1; 3; 2; 8 |]
          use cos = make be [| 3; 4 |]
          use sin = make be [| 2; 4 |]
          use y = make be [| 1; 3; 2; 8 |]
          Backends.expectArgumentError "sin" "[2,4]" (fun () -> be.Rope(x, cos, sin, y, RopeLayout.Adjacent, false)) "Rope" }
      test "y of another shape names 'y'" {
          let be = h.Get()
          use x = make be [| 1; 3; 2; 8 |]
          use cos = make be [| 3; 4 |]
          use sin = make be [| 3; 4 |]
          use y = make be [| 1; 3; 1; 8 |]
          Backends.expectArgumentError "y" "[1,3,1,8]" (fun () -> be.Rope(x, cos, sin, y, RopeLayout.HalfSplit, true)) "Rope" }
      test "an odd head size names 'x'" {
          let be = h.Get()
          use x = make be [| 1; 3; 2; 7 |]
          use cos = make be [| 3; 3 |]
          use sin = make be [| 3; 3 |]
          use y = make be [| 1; 3; 2; 7 |]
          Backends.expectArgumentError "x" "[1,3,2,7]" (fun () -> be.Rope(x, cos, sin, y, RopeLayout.HalfSplit, false)) "Rope" } ]

[<Tests>]
let tests =
    // Sequenced: the backends are shared by the whole run and are not thread-safe (one caller at a time).
    testSequenced <| testList "Ops.Rope" [
        for h in Backends.all ->
            testList h.Name [
                testList "rotate" [ for c in cases do yield! ropeTests h c ]
                testList "errors" (errorTests h) ] ]
