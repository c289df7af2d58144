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

/// A tolerance in the fla metric of `close`: pass if max|Δ| ≤ MaxAbs, otherwise require relRms < RelRms.
/// Each kernel test names its tolerances and says why the values are what they are.
type Tolerance = { RelRms: float; MaxAbs: float }

/// Relative RMS error budget of a result accumulated in fp32 over `terms` terms: rounding errors of a
/// sum with random signs grow like 2^-24·√terms (≈ 6e-8·√terms), so allow `perSqrtTerm`·√terms on top of
/// a `floor` for the few roundings around the sum.
let fp32Accumulation (floor: float) (perSqrtTerm: float) (terms: int) = floor + perSqrtTerm * sqrt (float (max terms 1))

/// Like `close`, with a Tolerance, and on failure names the worst element (index, expected, actual).
let closeTo (tol: Tolerance) (expected: float[]) (actual: float32[]) (what: string) =
    Expect.equal actual.Length expected.Length $"{what}: length"
    match actual |> Array.tryFindIndex (fun x -> System.Single.IsNaN x || System.Single.IsInfinity x) with
    | Some i -> failtestf "%s: non-finite value %g at index %d (expected %g)" what actual[i] i expected[i]
    | None -> ()
    let ma = maxAbs expected actual
    if ma > tol.MaxAbs then
        let r = relRms expected actual
        if not (r < tol.RelRms) then
            let worst = Array.init expected.Length (fun i -> abs (expected[i] - float actual[i])) |> Array.indexed |> Array.maxBy snd |> fst
            failtestf "%s: relative RMS error %.3e ≥ %.1e (max |Δ| %.3e > %.1e at index %d: expected %.9g, got %.9g)"
                what r tol.RelRms ma tol.MaxAbs worst expected[worst] actual[worst]

/// A scalar in the same metric: pass if |Δ| ≤ MaxAbs, otherwise require |Δ|/|expected| < RelRms.
let scalarClose (tol: Tolerance) (expected: float) (actual: float32) (what: string) =
    closeTo tol [| expected |] [| actual |] what

/// Bit-for-bit equality (exact copies, determinism); names the first differing element.
let bitEqual (expected: float32[]) (actual: float32[]) (what: string) =
    Expect.equal actual.Length expected.Length $"{what}: length"
    let bits (x: float32) = System.BitConverter.SingleToInt32Bits x
    match Array.zip expected actual |> Array.tryFindIndex (fun (e, a) -> bits e <> bits a) with
    | Some i -> failtestf "%s: element %d differs: %.9g then %.9g" what i expected[i] actual[i]
    | None -> ()

/// Widens float32 data to the double the references compute in.
let toDouble (x: float32[]) : float[] = Array.map float x
