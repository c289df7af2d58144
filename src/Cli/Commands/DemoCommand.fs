/// `taylor-calibrate demo`: the main job on built-in defaults. For now: the device list and a GEMM checked
/// against a double-precision product on the default device (later issues make it the conversion of the
/// stories260K teacher).
module TaylorCalibrate.Cli.DemoCommand

open System
open Argu
open TaylorCalibrate.Backend
open TaylorCalibrate.Cli.Common

type Args =
    | Device of spec: string
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Device _ -> "auto (default) | cpu | vulkan | vulkan:N | vulkan:NAME"

/// Largest relative error of an fp32 GEMM (odd shape, both transposes) against a double product.
let gemmCheck (be: IBackend) =
    let m, n, k = 193, 211, 167
    let rnd = Random 7
    let a = Array.init (k * m) (fun _ -> float32 (rnd.NextDouble() * 2.0 - 1.0)) // stored [K,M]
    let b = Array.init (n * k) (fun _ -> float32 (rnd.NextDouble() * 2.0 - 1.0)) // stored [N,K]
    use ta = be.FromArray(a, k, m)
    use tb = be.FromArray(b, n, k)
    use tc = be.Allocate [| m; n |]
    let spec = GemmSpec(m, n, k, TransA = true, TransB = true)
    let sw = Diagnostics.Stopwatch.StartNew()
    be.Gemm(ta, tb, tc, spec)
    let c = tc.ToArray()
    let seconds = sw.Elapsed.TotalSeconds
    let mutable worst = 0.0
    for i in 0 .. m - 1 do
        for j in 0 .. n - 1 do
            let mutable s, sabs = 0.0, 0.0
            for p in 0 .. k - 1 do
                let x = float a[p * m + i] * float b[j * k + p]
                s <- s + x
                sabs <- sabs + abs x
            // Relative to Σ|a·b|: the scale fp32 rounding errors of a K-term dot product live on.
            worst <- max worst (abs (float c[i * n + j] - s) / max sabs 1e-30)
    m, n, k, worst, seconds

let run (args: ParseResults<Args>) =
    DevicesCommand.run (ArgumentParser.Create<DevicesCommand.Args>().Parse [||]) |> ignore
    use be = openDevice (args.TryGetResult Device)
    printfn "\nGEMM check on %s (%s):" be.Name be.Info.Name
    let m, n, k, worst, seconds = gemmCheck be
    // fp32 accumulation of K terms: error ≲ K·2⁻²⁴ relative to Σ|a·b| in the worst case, ~√K·2⁻²⁴ typically.
    let bound = float k * Math.Pow(2.0, -24.0)
    printfn "  C = Aᵀ·Bᵀ, M=%d N=%d K=%d: max error relative to Σ|a·b| = %.2e (bound K·2^-24 = %.2e), %.1f ms incl. transfers" m n k worst bound (seconds * 1000.0)
    if worst <= bound then
        printfn "demo OK"
        0
    else
        eprintfn "demo FAILED: GEMM error above the fp32 bound"
        1
