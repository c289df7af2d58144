/// Numerical comparisons used by every kernel test. Tolerances are named, state their metric, and say why.
module TaylorCalibrate.Tests.Numeric

open Expecto

/// Relative RMS error RMS(ref − out)/RMS(ref) (the fla metric); 0 when both are exactly zero.
let relRms (expected: float[]) (actual: float32[]) =
    if expected.Length <> actual.Length then failwithf "length %d vs %d" expected.Length actual.Length
    let mutable num = 0.0
    let mutable den = 0.0
    for i in 0 .. expected.Length - 1 do
        let d = expected[i] - float actual[i]
        num <- num + d * d
        den <- den + expected[i] * expected[i]
    if den = 0.0 then sqrt num else sqrt (num / den)

/// Largest |ref − out|.
let maxAbs (expected: float[]) (actual: float32[]) =
    Array.fold2 (fun m (e: float) (a: float32) -> max m (abs (e - float a))) 0.0 expected actual

/// Passes when max|Δ| ≤ absTol, otherwise requires relRms < relTol; any NaN/Inf in the output fails.
let close (relTol: float) (absTol: float) (expected: float[]) (actual: float32[]) (what: string) =
    Expect.equal actual.Length expected.Length $"{what}: length"
    match actual |> Array.tryFindIndex (fun x -> System.Single.IsNaN x || System.Single.IsInfinity x) with
    | Some i -> failtestf "%s: non-finite value %g at index %d" what actual[i] i
    | None -> ()
    let ma = maxAbs expected actual
    if ma > absTol then
        let r = relRms expected actual
        if not (r < relTol) then
            failtestf "%s: relative RMS error %.3e ≥ %.1e (max |Δ| %.3e)" what r relTol ma
