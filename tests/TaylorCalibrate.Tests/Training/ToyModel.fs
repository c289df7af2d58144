/// A linear least-squares model built from backend GEMMs and named Parameters, small enough to train in
/// every test: ŷ = x·Wᵀ + b with W (O, I) "toy.linear.weight" and b (1, O) "toy.linear.bias";
/// loss = mean over the n·O outputs of (ŷ − y)², so ∂loss/∂ŷ = 2(ŷ − y)/(n·O).
module TaylorCalibrate.Tests.Training.ToyModel

open System
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Training

/// Sizes of the toy model.
type ToyDims = { In: int; Out: int }

/// The model's parameters on one backend.
type Toy(be: IBackend, dims: ToyDims, weight: float32[], bias: float32[]) =
    let w = be.FromArray(weight, dims.Out, dims.In)
    let b = be.FromArray(bias, 1, dims.Out)
    let gw = be.Allocate [| dims.Out; dims.In |]
    let gb = be.Allocate [| 1; dims.Out |]
    member _.Dims = dims
    member _.Parameters : Parameter list =
        [ { Name = "toy.linear.weight"; Value = w; Grad = gw }; { Name = "toy.linear.bias"; Value = b; Grad = gb } ]
    interface IDisposable with
        member _.Dispose() = for t in [ w; b; gw; gb ] do t.Dispose()

/// Fresh parameters from a seed.
let create (be: IBackend) (dims: ToyDims) (seed: int) =
    new Toy(be, dims, TaylorCalibrate.Tests.Rand.normal seed 0.5 (dims.Out * dims.In), TaylorCalibrate.Tests.Rand.normal (seed + 1) 0.5 dims.Out)

/// Mean squared error of the rows x (n, I) against y (n, O); adds weight·∂loss/∂θ to the gradients.
let lossAndGrad (be: IBackend) (toy: Toy) (x: float32[]) (y: float32[]) (weight: float32) : float =
    let I, O = toy.Dims.In, toy.Dims.Out
    let n = x.Length / I
    let w, b = toy.Parameters[0], toy.Parameters[1]
    use xt = be.FromArray(x, n, I)
    use r = be.FromArray(Array.create n 1f, n, 1) // ones, then reused below
    use yhat = be.Allocate [| n; O |]
    use target = be.FromArray(y, n, O)
    use scalar = be.Allocate [| 1 |]
    be.Gemm(xt, w.Value, yhat, GemmSpec(n, O, I, TransB = true))                                 // (n, O) = x Wᵀ
    be.Gemm(r, b.Value, yhat, GemmSpec(n, O, 1, Beta = 1f))                                     // + 1·b
    be.Axpy(-1f, target, yhat)                                                                  // ŷ − y
    be.Reduce(ReduceOp.SumOfSquares, yhat, scalar)
    let loss = float (scalar.ToArray()[0]) / float (n * O)
    let g = weight * 2f / float32 (n * O)
    be.Gemm(yhat, xt, w.Grad, GemmSpec(O, I, n, TransA = true, Alpha = g, Beta = 1f))            // dW += g·Rᵀx
    be.Gemm(r, yhat, b.Grad, GemmSpec(1, O, n, TransA = true, Alpha = g, Beta = 1f))             // db += g·1ᵀR
    loss

/// A fixed regression data set of `rows` rows: y = x·W*ᵀ + noise.
let dataset (dims: ToyDims) (rows: int) (seed: int) =
    let x = TaylorCalibrate.Tests.Rand.normal seed 1.0 (rows * dims.In)
    let wStar = TaylorCalibrate.Tests.Rand.normal (seed + 1) 1.0 (dims.Out * dims.In)
    let noise = TaylorCalibrate.Tests.Rand.normal (seed + 2) 0.1 (rows * dims.Out)
    let y =
        Array.init (rows * dims.Out) (fun k ->
            let i, o = k / dims.Out, k % dims.Out
            let mutable s = noise[k]
            for j in 0 .. dims.In - 1 do s <- s + x[i * dims.In + j] * wStar[o * dims.In + j]
            s)
    x, y

/// Rows [start, start + count) of a row-major (rows, width) array.
let rows (a: float32[]) (width: int) (start: int) (count: int) = Array.sub a (start * width) (count * width)
