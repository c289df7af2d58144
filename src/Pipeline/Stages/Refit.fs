/// Closed-form least-squares refits for the calibrate-plus initialisation (CalibratePlus.fs):
/// a multi-output ridge regression Y ≈ X·Wᵀ solved from its normal equations (XᵀX + λI)·Wᵀ = XᵀY in
/// double precision. The Gram blocks may come from the device window by window (fp32 inside one window of
/// at most a few thousand rows, summed across windows in double); λ is relative to the mean diagonal of XᵀX
/// so one constant serves models of any width.
module TaylorCalibrate.Pipeline.Stages.Refit

open MathNet.Numerics.LinearAlgebra

/// Normal equations of Y (N, outputs) ≈ X (N, inputs)·Wᵀ, accumulated block by block.
type NormalEquations(inputs: int, outputs: int) =
    let xtx = Array2D.zeroCreate<float> inputs inputs
    let xty = Array2D.zeroCreate<float> inputs outputs
    let mutable rows = 0L
    member _.Inputs = inputs
    member _.Outputs = outputs
    member _.Rows = rows
    /// Adds one block's XᵀX (inputs, inputs) and XᵀY (inputs, outputs), row-major, over n rows.
    member _.Add(gram: float32[], cross: float32[], n: int) =
        for i in 0 .. inputs - 1 do
            for j in 0 .. inputs - 1 do xtx[i, j] <- xtx[i, j] + float gram[i * inputs + j]
            for j in 0 .. outputs - 1 do xty[i, j] <- xty[i, j] + float cross[i * outputs + j]
        rows <- rows + int64 n
    /// Adds rows given directly (X (n, inputs), Y (n, outputs), row-major), in double.
    member this.AddRows(x: float[], y: float[], n: int) =
        for r in 0 .. n - 1 do
            for i in 0 .. inputs - 1 do
                let xi = x[r * inputs + i]
                for j in 0 .. inputs - 1 do xtx[i, j] <- xtx[i, j] + xi * x[r * inputs + j]
                for j in 0 .. outputs - 1 do xty[i, j] <- xty[i, j] + xi * y[r * outputs + j]
        rows <- rows + int64 n
    /// W (outputs, inputs), row-major, minimising ‖Y − X·Wᵀ‖² + λ‖W‖², λ = relativeRidge·tr(XᵀX)/inputs.
    /// Cholesky solve: with λ > 0 the system is positive definite even when X is rank deficient.
    member _.Solve(relativeRidge: float) : float[] =
        let g = Matrix<float>.Build.DenseOfArray xtx
        let lambda = relativeRidge * max (g.Trace() / float inputs) 1e-300
        let a = g + Matrix<float>.Build.DenseIdentity(inputs) * lambda
        let wt = a.Cholesky().Solve(Matrix<float>.Build.DenseOfArray xty) // (inputs, outputs)
        Array.init (outputs * inputs) (fun k -> wt[k % inputs, k / inputs])
