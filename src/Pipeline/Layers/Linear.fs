/// The affine layer y = x·Wᵀ (+ 1·b) over rows, and its reverse (docs/training.md, "Layers"):
///   dW += dyᵀ·x,  db += Σ_rows dy,  dx = dy·W (or dx += dy·W).
/// W is stored (out, in) like every checkpoint; the bias as a row (1, out) so it is a GEMM operand.
namespace TaylorCalibrate.Pipeline.Layers

open TaylorCalibrate.Backend

/// One linear map: W (out, in), optional bias (1, out).
type LinearParams =
    { W: Tensor
      Bias: Tensor option }
    member p.Out = p.W.Shape[0]
    member p.In = p.W.Shape[1]

module Linear =
    /// A linear map without a bias.
    let ofWeight (w: Tensor) = { W = w; Bias = None }

    /// y (rows, out) = x (rows, in)·Wᵀ, then y += ones·b (a rank-1 GEMM) when there is a bias.
    let forward (be: IBackend) (scratch: Scratch) (p: LinearParams) (x: Tensor) (y: Tensor) (rows: int) =
        be.Gemm(x, p.W, y, GemmSpec(rows, p.Out, p.In, TransB = true))
        p.Bias |> Option.iter (fun b -> be.Gemm(scratch.Ones rows, b, y, GemmSpec(rows, p.Out, 1, Beta = 1f)))

    /// Parameter gradients only: dW += dyᵀ·x and db += onesᵀ·dy, for the tensors `grads` trains.
    let backwardParams (be: IBackend) (scratch: Scratch) (grads: Grads) (p: LinearParams) (x: Tensor) (dy: Tensor) (rows: int) =
        grads.Of p.W |> Option.iter (fun dw ->
            be.Gemm(dy, x, dw, GemmSpec(p.Out, p.In, rows, TransA = true, Beta = 1f)))
        p.Bias |> Option.iter (fun b ->
            grads.Of b |> Option.iter (fun db ->
                be.Gemm(scratch.Ones rows, dy, db, GemmSpec(1, p.Out, rows, TransA = true, Beta = 1f))))

    /// dx (rows, in) = dy·W, or dx += dy·W when `accumulate`.
    let backwardInput (be: IBackend) (p: LinearParams) (dy: Tensor) (dx: Tensor) (rows: int) (accumulate: bool) =
        be.Gemm(dy, p.W, dx, GemmSpec(rows, p.In, p.Out, Beta = (if accumulate then 1f else 0f)))

    /// Both: parameter gradients, then dx written (or accumulated) when given.
    let backward (be: IBackend) (scratch: Scratch) (grads: Grads) (p: LinearParams) (x: Tensor) (dy: Tensor)
                 (dx: Tensor option) (rows: int) (accumulate: bool) =
        backwardParams be scratch grads p x dy rows
        dx |> Option.iter (fun dx -> backwardInput be p dy dx rows accumulate)
