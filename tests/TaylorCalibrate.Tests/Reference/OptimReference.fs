/// Naive double-precision reference of the whole-tensor reductions (IBackend.Reduce, with gradients), the
/// AdamW step (IBackend.AdamW) and global gradient-norm clipping (IBackend.ClipGradNorm). Maths: docs/kernels.md
/// §4 (AdamW, Gradient-norm clipping, Reductions); AdamW as documented on AdamWSpec (PyTorch semantics).
module TaylorCalibrate.Tests.Reference.Optim

open TaylorCalibrate.Backend

/// Σx, Σx/n, Σx² or max|x| (0 for an empty x).
let reduce (op: ReduceOp) (x: float[]) =
    match op with
    | ReduceOp.Sum -> Array.sum x
    | ReduceOp.Mean -> Array.sum x / float x.Length
    | ReduceOp.SumOfSquares -> x |> Array.sumBy (fun v -> v * v)
    | ReduceOp.MaxAbs -> if x.Length = 0 then 0.0 else x |> Array.map abs |> Array.max
    | other -> invalidArg "op" $"unknown ReduceOp {other}"

/// d reduce / dx scaled by the upstream gradient dr (MaxAbs: sign at the unique arg max, 0 elsewhere).
let reduceBackward (op: ReduceOp) (x: float[]) (dr: float) =
    match op with
    | ReduceOp.Sum -> Array.create x.Length dr
    | ReduceOp.Mean -> Array.create x.Length (dr / float x.Length)
    | ReduceOp.SumOfSquares -> x |> Array.map (fun v -> 2.0 * v * dr)
    | ReduceOp.MaxAbs ->
        let k = x |> Array.mapi (fun i v -> i, abs v) |> Array.maxBy snd |> fst
        Array.init x.Length (fun i -> if i = k then float (sign x[i]) * dr else 0.0)
    | other -> invalidArg "op" $"unknown ReduceOp {other}"

/// One AdamW step; returns the new (param, m, v). The spec's float32 hyper-parameters are used as stored.
let adamW (spec: AdamWSpec) (param: float[]) (grad: float[]) (m: float[]) (v: float[]) =
    let lr, wd = float spec.LearningRate, float spec.WeightDecay
    let b1, b2, eps = float spec.Beta1, float spec.Beta2, float spec.Epsilon
    let c1 = 1.0 - pown b1 spec.Step
    let c2 = 1.0 - pown b2 spec.Step
    let m' = Array.map2 (fun mv g -> b1 * mv + (1.0 - b1) * g) m grad
    let v' = Array.map2 (fun vv g -> b2 * vv + (1.0 - b2) * g * g) v grad
    let p' = Array.init param.Length (fun i -> param[i] * (1.0 - lr * wd) - lr * (m'[i] / c1) / (sqrt (v'[i] / c2) + eps))
    p', m', v'

/// N = √(Σ over all tensors Σg²); every gradient scaled by maxNorm/(N + 1e-6) when N > maxNorm. Returns
/// N and the (possibly scaled) gradients.
let clipGradNorm (grads: float[] list) (maxNorm: float) =
    let n = grads |> List.sumBy (Array.sumBy (fun g -> g * g)) |> sqrt
    let factor = if n > maxNorm then maxNorm / (n + 1e-6) else 1.0
    n, grads |> List.map (Array.map (fun g -> g * factor))
