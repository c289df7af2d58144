/// Naive double-precision reference of the ops over a vocabulary: row softmax (IBackend.Softmax,
/// SoftmaxBackward), cross-entropy with ignored targets (IBackend.CrossEntropy) and KL(teacher‖student)
/// (IBackend.KlDivergence), each with its gradient. Rows have length V (`cols`). Maths: docs/kernels.md §4
/// (Cross-entropy / KL); per-row losses and gradScale exactly as documented on IBackend.
module TaylorCalibrate.Tests.Reference.Loss

/// log Σ_j e^{z[off+j]} over one row of length v (max-shifted, so no overflow).
let logSumExp (z: float[]) (off: int) (v: int) =
    let mutable m = System.Double.NegativeInfinity
    for j in 0 .. v - 1 do m <- max m z[off + j]
    let mutable s = 0.0
    for j in 0 .. v - 1 do s <- s + exp (z[off + j] - m)
    m + log s

/// y = softmax of each row of length `cols`.
let softmax (x: float[]) (cols: int) =
    let rows = x.Length / cols
    let lse = Array.init rows (fun r -> logSumExp x (r * cols) cols)
    Array.init x.Length (fun i -> exp (x[i] - lse[i / cols]))

/// Reverse mode of `softmax` from its output: dx = y ⊙ (dy − Σ dy⊙y) per row.
let softmaxBackward (y: float[]) (dy: float[]) (cols: int) =
    let rows = y.Length / cols
    let dots = Array.init rows (fun r -> Seq.sum (seq { for j in 0 .. cols - 1 -> dy[r * cols + j] * y[r * cols + j] }))
    Array.init y.Length (fun i -> y[i] * (dy[i] - dots[i / cols]))

/// Cross-entropy per row n of logits (N, V): loss[n] = lse(z_n) − z_n[target_n], and
/// dlogits = gradScale·(softmax(z) − onehot(target)); rows with target < 0 get loss 0 and gradient 0.
/// dlogits is the gradient of gradScale·Σ_n loss[n].
let crossEntropy (logits: float[]) (targets: int[]) (v: int) (gradScale: float) =
    let n = targets.Length
    let loss = Array.zeroCreate n
    let dlogits = Array.zeroCreate logits.Length
    for r in 0 .. n - 1 do
        let t = targets[r]
        if t >= 0 then
            let off = r * v
            let lse = logSumExp logits off v
            loss[r] <- lse - logits[off + t]
            for j in 0 .. v - 1 do
                let p = exp (logits[off + j] - lse)
                dlogits[off + j] <- gradScale * (p - (if j = t then 1.0 else 0.0))
    loss, dlogits

/// KL(p_T‖p_S) = Σ p_T (ln p_T − ln p_S) per row of teacher and student logits (N, V), with
/// dstudent = gradScale·(p_S − p_T), the gradient of gradScale·Σ_n loss[n] with respect to the student.
let klDivergence (teacher: float[]) (student: float[]) (v: int) (gradScale: float) =
    let n = teacher.Length / v
    let loss = Array.zeroCreate n
    let dstudent = Array.zeroCreate student.Length
    for r in 0 .. n - 1 do
        let off = r * v
        let lseT, lseS = logSumExp teacher off v, logSumExp student off v
        let mutable kl = 0.0
        for j in 0 .. v - 1 do
            let logPT, logPS = teacher[off + j] - lseT, student[off + j] - lseS
            let pT = exp logPT
            kl <- kl + pT * (logPT - logPS)
            dstudent[off + j] <- gradScale * (exp logPS - pT)
        loss[r] <- kl
    loss, dstudent
