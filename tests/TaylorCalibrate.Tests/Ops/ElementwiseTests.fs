/// The elementwise ops of IBackend (Add, Mul, Scale, Axpy, Unary, UnaryBackward, SwiGlu, SwiGluBackward) on
/// every backend against the double reference (Reference/ElementwiseReference.fs), at odd sizes; in-place
/// use where the contract allows it (Scale, Unary: y may be x); overwrite (dx =) versus accumulate
/// (Axpy: y +=); argument errors. Maths: docs/kernels.md §4 (Elementwise).
module TaylorCalibrate.Tests.Ops.ElementwiseTests

open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Tests
open TaylorCalibrate.Tests.Numeric
open TaylorCalibrate.Tests.Reference

/// Add, Mul, Scale: one fp32 rounding per element (≤ 2^-24 relative, ≈ 3e-8 RMS); 2e-7 allows a few ulp
/// and nothing more. No absolute escape: the relative metric is always applied.
let private arithmeticTol = { RelRms = 2e-7; MaxAbs = 0.0 }

/// Axpy y + s·x: two roundings (one with a fused multiply-add) on top of possible cancellation of y and s·x,
/// which the relative RMS over the whole tensor absorbs.
let private axpyTol = { RelRms = 3e-7; MaxAbs = 0.0 }

/// Unary forward and backward, relative RMS: GLSL allows exp (3 + 2|x|) ulp and division 2.5 ulp; at
/// |x| ≤ 10 that is ≤ 23 ulp ≈ 1.4e-6 on the largest values, which dominate the RMS (the CPU's MathF is
/// ≤ 1 ulp). max |Δ| ≤ 1e-6 also passes (fla rule: log near x = 1 and silu′ near its zero have tiny values).
let private unaryTol = { RelRms = 2e-6; MaxAbs = 1e-6 }

/// SwiGLU y, da, db: silu (an exp and a division) times b times dy, as for unaryTol.
let private swiGluTol = { RelRms = 2e-6; MaxAbs = 1e-6 }

let private shapes = [ [| 1 |]; [| 3; 7 |]; [| 5; 129 |]; [| 17; 1000 |] ]
let private count (shape: int[]) = Array.fold (*) 1 shape
let private text (shape: int[]) = shape |> Array.map string |> String.concat "x"
let private unaryOps = [ UnaryOp.Silu; UnaryOp.Sigmoid; UnaryOp.Softplus; UnaryOp.Exp; UnaryOp.Log ]

/// Inputs of a unary op: log needs x > 0; the others get N(0, 3²), which covers the saturated tails.
let private unaryInput (op: UnaryOp) seed n =
    if op = UnaryOp.Log then Rand.uniform seed 0.01 10.0 n else Rand.normal seed 3.0 n

/// A value any op that accumulated instead of overwriting would leave visible.
let private garbage n = Array.create n 777.0f

let private binaryTests (h: Backends.BackendHandle) (shape: int[]) =
    let n = count shape
    let a, b = Rand.normal 1 1.0 n, Rand.normal 2 1.0 n
    [ test $"Add {text shape}" {
          let be = h.Get()
          use ta = be.FromArray(a, shape)
          use tb = be.FromArray(b, shape)
          use y = be.FromArray(garbage n, shape)
          be.Add(ta, tb, y)
          closeTo arithmeticTol (Elementwise.add (toDouble a) (toDouble b)) (y.ToArray()) "y" }
      test $"Mul {text shape}" {
          let be = h.Get()
          use ta = be.FromArray(a, shape)
          use tb = be.FromArray(b, shape)
          use y = be.FromArray(garbage n, shape)
          be.Mul(ta, tb, y)
          closeTo arithmeticTol (Elementwise.mul (toDouble a) (toDouble b)) (y.ToArray()) "y" }
      test $"Scale {text shape}" {
          let be = h.Get()
          use x = be.FromArray(a, shape)
          use y = be.FromArray(garbage n, shape)
          be.Scale(x, -0.37f, y)
          closeTo arithmeticTol (Elementwise.scale (float -0.37f) (toDouble a)) (y.ToArray()) "y"
          closeTo arithmeticTol (toDouble a) (x.ToArray()) "x unchanged" }
      test $"Scale in place {text shape}" {
          let be = h.Get()
          use x = be.FromArray(a, shape)
          be.Scale(x, 2.5f, x)
          closeTo arithmeticTol (Elementwise.scale 2.5 (toDouble a)) (x.ToArray()) "y = x" }
      test $"Axpy accumulates {text shape}" {
          let be = h.Get()
          use x = be.FromArray(a, shape)
          use y = be.FromArray(b, shape)
          be.Axpy(1.7f, x, y)
          closeTo axpyTol (Elementwise.axpy (float 1.7f) (toDouble a) (toDouble b)) (y.ToArray()) "y += s·x" } ]

let private unaryTests (h: Backends.BackendHandle) (shape: int[]) =
    let n = count shape
    [ for op in unaryOps do
        let x = unaryInput op (int op + 10) n
        let dy = Rand.normal 3 1.0 n
        yield test $"{op} {text shape}" {
            let be = h.Get()
            use tx = be.FromArray(x, shape)
            use y = be.FromArray(garbage n, shape)
            be.Unary(op, tx, y)
            closeTo unaryTol (Elementwise.unary op (toDouble x)) (y.ToArray()) "y" }
        yield test $"{op} in place {text shape}" {
            let be = h.Get()
            use tx = be.FromArray(x, shape)
            be.Unary(op, tx, tx)
            closeTo unaryTol (Elementwise.unary op (toDouble x)) (tx.ToArray()) "y = x" }
        yield test $"{op} backward overwrites dx {text shape}" {
            let be = h.Get()
            use tx = be.FromArray(x, shape)
            use tdy = be.FromArray(dy, shape)
            use dx = be.FromArray(garbage n, shape)
            be.UnaryBackward(op, tx, tdy, dx)
            closeTo unaryTol (Elementwise.unaryBackward op (toDouble x) (toDouble dy)) (dx.ToArray()) "dx" } ]

let private swiGluTests (h: Backends.BackendHandle) (shape: int[]) =
    let n = count shape
    let a, b, dy = Rand.normal 4 3.0 n, Rand.normal 5 1.0 n, Rand.normal 6 1.0 n
    [ test $"SwiGlu {text shape}" {
          let be = h.Get()
          use ta = be.FromArray(a, shape)
          use tb = be.FromArray(b, shape)
          use y = be.FromArray(garbage n, shape)
          be.SwiGlu(ta, tb, y)
          closeTo swiGluTol (Elementwise.swiGlu (toDouble a) (toDouble b)) (y.ToArray()) "y" }
      test $"SwiGlu backward overwrites da, db {text shape}" {
          let be = h.Get()
          use ta = be.FromArray(a, shape)
          use tb = be.FromArray(b, shape)
          use tdy = be.FromArray(dy, shape)
          use da = be.FromArray(garbage n, shape)
          use db = be.FromArray(garbage n, shape)
          be.SwiGluBackward(ta, tb, tdy, da, db)
          let eda, edb = Elementwise.swiGluBackward (toDouble a) (toDouble b) (toDouble dy)
          closeTo swiGluTol eda (da.ToArray()) "da"
          closeTo swiGluTol edb (db.ToArray()) "db" } ]

let private errorTests (h: Backends.BackendHandle) =
    let make (be: IBackend) (shape: int[]) = be.FromArray(Array.zeroCreate (count shape), shape)
    [ test "Add with b of another element count names 'b'" {
          let be = h.Get()
          use a = make be [| 3; 7 |]
          use b = make be [| 4; 7 |]
          use y = make be [| 3; 7 |]
          Backends.expectArgumentError "b" "[4,7]" (fun () -> be.Add(a, b, y)) "Add" }
      test "Mul with y of another element count names 'y'" {
          let be = h.Get()
          use a = make be [| 3; 7 |]
          use b = make be [| 3; 7 |]
          use y = make be [| 20 |]
          Backends.expectArgumentError "y" "[20]" (fun () -> be.Mul(a, b, y)) "Mul" }
      test "Axpy with y of another element count names 'y'" {
          let be = h.Get()
          use x = make be [| 5 |]
          use y = make be [| 6 |]
          Backends.expectArgumentError "y" "[6]" (fun () -> be.Axpy(1.0f, x, y)) "Axpy" }
      test "Unary with y of another element count names 'y'" {
          let be = h.Get()
          use x = make be [| 5 |]
          use y = make be [| 6 |]
          Backends.expectArgumentError "y" "[6]" (fun () -> be.Unary(UnaryOp.Silu, x, y)) "Unary" }
      test "UnaryBackward with dy of another element count names 'dy'" {
          let be = h.Get()
          use x = make be [| 5 |]
          use dy = make be [| 4 |]
          use dx = make be [| 5 |]
          Backends.expectArgumentError "dy" "[4]" (fun () -> be.UnaryBackward(UnaryOp.Exp, x, dy, dx)) "UnaryBackward" }
      test "SwiGluBackward with db of another element count names 'db'" {
          let be = h.Get()
          use a = make be [| 2; 3 |]
          use b = make be [| 2; 3 |]
          use dy = make be [| 2; 3 |]
          use da = make be [| 2; 3 |]
          use db = make be [| 2; 4 |]
          Backends.expectArgumentError "db" "[2,4]" (fun () -> be.SwiGluBackward(a, b, dy, da, db)) "SwiGluBackward" } ]

[<Tests>]
let tests =
    // Sequenced: the backends are shared by the whole run and are not thread-safe (one caller at a time).
    testSequenced <| testList "Ops.Elementwise" [
        for h in Backends.all ->
            testList h.Name [
                testList "arithmetic" [ for s in shapes do yield! binaryTests h s ]
                testList "unary" [ for s in shapes do yield! unaryTests h s ]
                testList "swiglu" [ for s in shapes do yield! swiGluTests h s ]
                testList "errors" (errorTests h) ] ]
