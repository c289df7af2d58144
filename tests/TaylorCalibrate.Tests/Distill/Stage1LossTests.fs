/// The Stage-1 loss (Distill/Stage1Loss.fs) on both backends: value and gradient against a float64
/// reference, the gradient against central finite differences of the backend's own loss, the zero-difference
/// subgradient (0, no NaN), gradScale, and shape errors naming the tensor.
module TaylorCalibrate.Tests.Distill.Stage1LossTests

open System
open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Distill
open TaylorCalibrate.Tests
open TaylorCalibrate.Tests.Numeric

/// f64 reference: L = (1/N) Σ_n ‖t_n − s_n‖/√D and ∂L/∂s (0 on rows where s_n = t_n).
let private reference (t: float32[]) (s: float32[]) (N: int) (D: int) : float * float[] =
    let c = 1.0 / (float N * sqrt (float D))
    let grad = Array.zeroCreate (N * D)
    let mutable loss = 0.0
    for n in 0 .. N - 1 do
        let d = Array.init D (fun j -> float s[n * D + j] - float t[n * D + j])
        let norm = sqrt (Array.sumBy (fun x -> x * x) d)
        loss <- loss + norm * c
        if norm > 0.0 then
            for j in 0 .. D - 1 do grad[n * D + j] <- d[j] / norm * c
    loss, grad

/// Teacher and student rows (N, D) with row `equalRow` identical in both.
let private data (N: int) (D: int) (seed: int) (equalRow: int) =
    let t = Rand.normal seed 1.0 (N * D)
    let s = Rand.normal (seed + 1) 1.0 (N * D)
    Array.blit t (equalRow * D) s (equalRow * D) D
    t, s

let private lossAndGrad (be: IBackend) (t: float32[]) (s: float32[]) (N: int) (D: int) (gradScale: float32) =
    use tt = be.FromArray(t, [| N; D |])
    use st = be.FromArray(s, [| N; D |])
    use g = be.Allocate [| N; D |]
    use ws = new Stage1Loss.Stage1LossWorkspace(be, N, D)
    let l = Stage1Loss.compute ws tt st (Some g) gradScale
    l, g.ToArray()

[<Tests>]
let tests =
    testList "Distill.Stage1Loss" [
        for b in Backends.all do
            test $"{b.Name}: loss and gradient match the float64 reference, with an exactly matched row" {
                let be = b.Get()
                let N, D = 37, 24
                let t, s = data N D 11 5
                let expectedLoss, expectedGrad = reference t s N D
                let l, g = lossAndGrad be t s N D 1f
                // The loss sums N·D fp32 squares and N row norms: relative error ~ 2^-24·√(N·D) plus a few roundings.
                scalarClose { RelRms = fp32Accumulation 1e-6 1e-7 (N * D); MaxAbs = 0.0 } expectedLoss l "loss"
                // Each gradient entry is d·r·c with r from a D-term fp32 sum of squares: a few ulps, relative.
                closeTo { RelRms = 1e-5; MaxAbs = 0.0 } expectedGrad g "gradient"
                for j in 0 .. D - 1 do
                    Expect.equal g[5 * D + j] 0f "the matched row gets the zero subgradient"
            }

            test $"{b.Name}: the gradient matches central finite differences of the loss" {
                let be = b.Get()
                let N, D = 3, 8
                let t, s = data N D 21 1
                let _, g = lossAndGrad be t s N D 1f
                let h = 1e-2f
                let lossAt (x: float32[]) =
                    use tt = be.FromArray(t, [| N; D |])
                    use st = be.FromArray(x, [| N; D |])
                    float (Stage1Loss.loss be tt st D)
                let l0 = lossAt s
                // Round-off of each fp32 loss is ≲ 8·2^-24·L; divided by 2h it bounds the difference's error.
                // Truncation: h²/6·|∂³L| with |∂³L| ≲ 3/(‖d‖²·N·√D), far below that for ‖d‖ ≈ √(2D) = 4.
                let roundOff = 8.0 * Math.Pow(2.0, -24.0) * l0 / (2.0 * float h)
                for i in 0 .. N * D - 1 do
                    if i / D <> 1 then // row 1 is the matched row: no derivative there
                        let plus = Array.copy s
                        let minus = Array.copy s
                        plus[i] <- s[i] + h
                        minus[i] <- s[i] - h
                        let fd = (lossAt plus - lossAt minus) / (float plus[i] - float minus[i])
                        let err = abs (fd - float g[i])
                        if err > 4.0 * roundOff + 1e-3 * abs fd then
                            failtestf "element %d: finite difference %.7g, gradient %.7g (|Δ| %.2e)" i fd g[i] err
            }

            test $"{b.Name}: identical outputs give loss 0 and a zero gradient (no NaN)" {
                let be = b.Get()
                let t = Rand.normal 31 1.0 (4 * 16)
                let l, g = lossAndGrad be t (Array.copy t) 4 16 1f
                Expect.equal l 0f "loss"
                Expect.isTrue (g |> Array.forall (fun x -> x = 0f)) "gradient all zero"
            }

            test $"{b.Name}: gradScale scales the gradient only; shape errors name the tensor" {
                let be = b.Get()
                let t, s = data 5 8 41 0
                let l1, g1 = lossAndGrad be t s 5 8 1f
                let l2, g2 = lossAndGrad be t s 5 8 0.25f
                Expect.equal l2 l1 "the loss does not depend on gradScale"
                // Scaling by a power of two is exact.
                bitEqual (g1 |> Array.map (fun x -> x * 0.25f)) g2 "gradient scaled by 1/4"
                use ws = new Stage1Loss.Stage1LossWorkspace(be, 5, 8)
                use tt = be.FromArray(t, [| 5; 8 |])
                use wrong = be.Allocate [| 4; 8 |]
                Backends.expectArgumentError "student" "" (fun () -> Stage1Loss.compute ws tt wrong None 1f |> ignore) "student of 4 rows"
            }
    ]
