/// RMSNorm and L2 norm (IBackend.RmsNorm, RmsNormBackward, L2Norm, L2NormBackward) on every backend against
/// the double reference (Reference/NormReference.fs): odd row lengths, rows where eps matters, the
/// backward from the backend's own saved rstd, dx overwritten and dw accumulated, argument errors.
/// Maths: docs/kernels.md §4 (RMSNorm, L2 norm).
module TaylorCalibrate.Tests.Ops.NormTests

open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Tests
open TaylorCalibrate.Tests.Numeric
open TaylorCalibrate.Tests.Reference

/// y and rstd, relative RMS: r comes from a C-term fp32 sum of squares (rounding ≈ 6e-8·√C relative,
/// halved by the inverse square root), then one or two products: 1e-6 + 1e-7·√C.
let private normTol (cols: int) = { RelRms = fp32Accumulation 1e-6 1e-7 cols; MaxAbs = 1e-6 }

/// dx, relative RMS: a C-term row dot (Σ γ̃⊙x or Σ dy⊙y) on top of the error of r (r³ in RMSNorm triples
/// it): 2e-6 + 2e-7·√C.
let private dxTol (cols: int) = { RelRms = fp32Accumulation 2e-6 2e-7 cols; MaxAbs = 1e-6 }

/// dw of RMSNorm, relative RMS: a sum over the rows (plus the old dw) of dy⊙x·r, each r with the error of
/// normTol: 1e-6 + 1e-7·(√rows + √C).
let private dwTol (rows: int) (cols: int) = { RelRms = 1e-6 + 1e-7 * (sqrt (float (rows + 1)) + sqrt (float cols)); MaxAbs = 1e-6 }

let private rmsEps = 1e-5f
let private l2Eps = 1e-6f

/// (shape of x, scale of x): the last dimension is the row; small scales make eps matter.
let private cases =
    [ [| 1; 1 |], 1.0; [| 3; 7 |], 1.0; [| 5; 129 |], 1.0; [| 17; 1000 |], 1.0; [| 2; 3; 33 |], 1.0
      [| 5; 129 |], 3e-3; [| 4; 7 |], 1e-4 ]

let private count (shape: int[]) = Array.fold (*) 1 shape
let private text (shape: int[], scale: float) =
    (shape |> Array.map string |> String.concat "x") + (if scale <> 1.0 then $" scale {scale}" else "")
let private garbage n = Array.create n 777.0f

let private rmsNormTests (h: Backends.BackendHandle) (shape: int[], scale: float) =
    let n = count shape
    let c = Array.last shape
    let rows = n / c
    let x = Rand.normal 1 scale n
    let w = Array.map (fun v -> 1.0f + 0.5f * v) (Rand.normal 2 1.0 c)
    let dy = Rand.normal 3 1.0 n
    let dw0 = Rand.normal 4 1.0 c
    [ test $"RmsNorm {text (shape, scale)}" {
          let be = h.Get()
          use tx = be.FromArray(x, shape)
          use tw = be.FromArray(w, c)
          use y = be.FromArray(garbage n, shape)
          use rstd = be.FromArray(garbage rows, rows)
          be.RmsNorm(tx, tw, y, rstd, rmsEps)
          let ey, er = Norm.rmsNorm (toDouble x) (toDouble w) (float rmsEps)
          closeTo (normTol c) ey (y.ToArray()) "y"
          closeTo (normTol c) er (rstd.ToArray()) "rstd" }
      test $"RmsNorm backward: dx overwritten, dw accumulated {text (shape, scale)}" {
          let be = h.Get()
          use tx = be.FromArray(x, shape)
          use tw = be.FromArray(w, c)
          use y = be.Allocate shape
          use rstd = be.Allocate [| rows |]
          be.RmsNorm(tx, tw, y, rstd, rmsEps)
          use tdy = be.FromArray(dy, shape)
          use dx = be.FromArray(garbage n, shape)
          use dw = be.FromArray(dw0, c)
          be.RmsNormBackward(tdy, tx, tw, rstd, dx, dw)
          let edx, edw = Norm.rmsNormBackward (toDouble dy) (toDouble x) (toDouble w) (float rmsEps)
          closeTo (dxTol c) edx (dx.ToArray()) "dx"
          closeTo (dwTol rows c) (Array.map2 (+) (toDouble dw0) edw) (dw.ToArray()) "dw (old dw + Σ rows)" } ]

let private l2NormTests (h: Backends.BackendHandle) (shape: int[], scale: float) =
    let n = count shape
    let c = Array.last shape
    let rows = n / c
    let x = Rand.normal 5 scale n
    let dy = Rand.normal 6 1.0 n
    [ test $"L2Norm {text (shape, scale)}" {
          let be = h.Get()
          use tx = be.FromArray(x, shape)
          use y = be.FromArray(garbage n, shape)
          use rstd = be.FromArray(garbage rows, rows)
          be.L2Norm(tx, y, rstd, c, l2Eps)
          let ey, er = Norm.l2Norm (toDouble x) c (float l2Eps)
          closeTo (normTol c) ey (y.ToArray()) "y"
          closeTo (normTol c) er (rstd.ToArray()) "rstd" }
      test $"L2Norm backward overwrites dx {text (shape, scale)}" {
          let be = h.Get()
          use tx = be.FromArray(x, shape)
          use y = be.Allocate shape
          use rstd = be.Allocate [| rows |]
          be.L2Norm(tx, y, rstd, c, l2Eps)
          use tdy = be.FromArray(dy, shape)
          use dx = be.FromArray(garbage n, shape)
          be.L2NormBackward(tdy, y, rstd, dx, c)
          let ey, er = Norm.l2Norm (toDouble x) c (float l2Eps)
          closeTo (dxTol c) (Norm.l2NormBackward (toDouble dy) ey er c) (dx.ToArray()) "dx" } ]

let private errorTests (h: Backends.BackendHandle) =
    let make (be: IBackend) (shape: int[]) = be.FromArray(Array.zeroCreate (count shape), shape)
    [ test "RmsNorm with rstd of the wrong length names 'rstd'" {
          let be = h.Get()
          use x = make be [| 3; 7 |]
          use w = make be [| 7 |]
          use y = make be [| 3; 7 |]
          use rstd = make be [| 4 |]
          Backends.expectArgumentError "rstd" "[4]" (fun () -> be.RmsNorm(x, w, y, rstd, rmsEps)) "RmsNorm" }
      test "RmsNorm with y of the wrong size names 'y'" {
          let be = h.Get()
          use x = make be [| 3; 7 |]
          use w = make be [| 7 |]
          use y = make be [| 3; 6 |]
          use rstd = make be [| 3 |]
          Backends.expectArgumentError "y" "[3,6]" (fun () -> be.RmsNorm(x, w, y, rstd, rmsEps)) "RmsNorm" }
      test "RmsNormBackward with dw of the wrong length names 'dw'" {
          let be = h.Get()
          use x = make be [| 3; 7 |]
          use w = make be [| 7 |]
          use dy = make be [| 3; 7 |]
          use rstd = make be [| 3 |]
          use dx = make be [| 3; 7 |]
          use dw = make be [| 6 |]
          Backends.expectArgumentError "dw" "[6]" (fun () -> be.RmsNormBackward(dy, x, w, rstd, dx, dw)) "RmsNormBackward" }
      test "L2Norm of x that does not split into rows names 'x'" {
          let be = h.Get()
          use x = make be [| 3; 7 |]
          use y = make be [| 3; 7 |]
          use rstd = make be [| 3 |]
          Backends.expectArgumentError "x" "[3,7]" (fun () -> be.L2Norm(x, y, rstd, 8, l2Eps)) "L2Norm" }
      test "L2NormBackward with dx of the wrong size names 'dx'" {
          let be = h.Get()
          use dy = make be [| 3; 7 |]
          use y = make be [| 3; 7 |]
          use rstd = make be [| 3 |]
          use dx = make be [| 2; 7 |]
          Backends.expectArgumentError "dx" "[2,7]" (fun () -> be.L2NormBackward(dy, y, rstd, dx, 7)) "L2NormBackward" } ]

[<Tests>]
let tests =
    // Sequenced: the backends are shared by the whole run and are not thread-safe (one caller at a time).
    testSequenced <| testList "Ops.Norm" [
        for h in Backends.all ->
            testList h.Name [
                testList "rmsnorm" [ for c in cases do yield! rmsNormTests h c ]
                testList "l2norm" [ for c in cases do yield! l2NormTests h c ]
                testList "errors" (errorTests h) ] ]
