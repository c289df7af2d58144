/// Naive double-precision reference of RMSNorm and L2 norm (IBackend.RmsNorm, RmsNormBackward, L2Norm,
/// L2NormBackward), row by row over rows of length C. Maths: docs/kernels.md §4 (RMSNorm, L2 norm).
module TaylorCalibrate.Tests.Reference.Norm

/// y = w ⊙ x·r, r = (mean x² + eps)^−½ per row; x (rows, C), w (C). Returns y (rows, C) and r (rows).
let rmsNorm (x: float[]) (w: float[]) (eps: float) =
    let c = w.Length
    let rows = x.Length / c
    let rstd = Array.init rows (fun r ->
        let mutable ss = 0.0
        for j in 0 .. c - 1 do ss <- ss + x[r * c + j] * x[r * c + j]
        1.0 / sqrt (ss / float c + eps))
    Array.init x.Length (fun i -> w[i % c] * x[i] * rstd[i / c]), rstd

/// Reverse mode of `rmsNorm`: with γ̃ = w ⊙ dy, dx = r·γ̃ − x·r³·mean(γ̃ ⊙ x) and dw = Σ_rows dy ⊙ x·r (this
/// call's contribution; the backend adds it to dw).
let rmsNormBackward (dy: float[]) (x: float[]) (w: float[]) (eps: float) =
    let c = w.Length
    let rows = x.Length / c
    let _, rstd = rmsNorm x w eps
    let dx = Array.zeroCreate x.Length
    let dw = Array.zeroCreate c
    for r in 0 .. rows - 1 do
        let rs = rstd[r]
        let mutable dot = 0.0
        for j in 0 .. c - 1 do dot <- dot + w[j] * dy[r * c + j] * x[r * c + j]
        let meanGx = dot / float c
        for j in 0 .. c - 1 do
            let i = r * c + j
            dx[i] <- rs * w[j] * dy[i] - x[i] * rs * rs * rs * meanGx
            dw[j] <- dw[j] + dy[i] * x[i] * rs
    dx, dw

/// y = x·rstd, rstd = (Σx² + eps)^−½ per row of length `cols`. Returns y and rstd (rows).
let l2Norm (x: float[]) (cols: int) (eps: float) =
    let rows = x.Length / cols
    let rstd = Array.init rows (fun r ->
        let mutable ss = 0.0
        for j in 0 .. cols - 1 do ss <- ss + x[r * cols + j] * x[r * cols + j]
        1.0 / sqrt (ss + eps))
    Array.init x.Length (fun i -> x[i] * rstd[i / cols]), rstd

/// Reverse mode of `l2Norm` from its outputs, as the backend receives them: dx = rstd·(dy − (dy·y)·y).
let l2NormBackward (dy: float[]) (y: float[]) (rstd: float[]) (cols: int) =
    let dx = Array.zeroCreate y.Length
    for r in 0 .. rstd.Length - 1 do
        let mutable dot = 0.0
        for j in 0 .. cols - 1 do dot <- dot + dy[r * cols + j] * y[r * cols + j]
        for j in 0 .. cols - 1 do
            let i = r * cols + j
            dx[i] <- rstd[r] * (dy[i] - dot * y[i])
    dx
