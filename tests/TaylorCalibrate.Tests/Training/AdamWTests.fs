/// The AdamW optimizer over named parameters (Training/AdamW.fs), on every backend. The backend's own AdamW
/// and ClipGradNorm ops are tested against the double reference in Ops/OptimTests.fs; here the optimizer is
/// checked against the same ops called by hand (so equality is bit for bit): each group gets its own rate and
/// decay, the schedule factor scales every rate, the step counter advances from 1, clipping covers the trained
/// gradients only, frozen parameters never change, a non-finite gradient stops the step before anything
/// changes, and Restore resumes the moments and the counter exactly.
module TaylorCalibrate.Tests.Training.AdamWTests

open System
open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Training
open TaylorCalibrate.Pipeline.Training.ParameterGroups
open TaylorCalibrate.Tests

let private sizes = [ "enc.attn.w", 37; "enc.attn.b", 5; "enc.mlp.w", 300; "enc.norm.w", 9 ]

/// attn names train at 1e-2 (decay 0.1) except biases at 3e-3 (no decay); norm frozen; the rest at 1e-3.
let private rules =
    [ { Group = "attn-bias"; Pattern = EndsWith "attn.b"; Treatment = Train { LearningRate = 3e-3f; WeightDecay = 0f } }
      { Group = "attn"; Pattern = Contains "attn"; Treatment = Train { LearningRate = 1e-2f; WeightDecay = 0.1f } }
      { Group = "frozen"; Pattern = Contains "norm"; Treatment = Freeze }
      { Group = "rest"; Pattern = Everything; Treatment = Train { LearningRate = 1e-3f; WeightDecay = 0.01f } } ]

let private expectedHyper (name: string) =
    if name.EndsWith "attn.b" then Some(3e-3f, 0f)
    elif name.Contains "attn" then Some(1e-2f, 0.1f)
    elif name.Contains "norm" then None
    else Some(1e-3f, 0.01f)

let private makeParameters (be: IBackend) (seed: int) =
    sizes |> List.mapi (fun i (name, n) ->
        { Name = name; Value = be.FromArray(Rand.normal (seed + i) 1.0 n, n); Grad = be.Allocate [| n |] })

let private dispose (ps: Parameter list) =
    for p in ps do
        p.Value.Dispose()
        p.Grad.Dispose()

/// Gradients for step s (different every step); `scale` makes them large enough to clip.
let private gradients (s: int) (scale: float) = sizes |> List.mapi (fun i (_, n) -> Rand.normal (1000 + 17 * s + i) scale n)

let private upload (be: IBackend) (ps: Parameter list) (gs: float32[] list) =
    List.iter2 (fun (p: Parameter) (g: float32[]) -> be.Upload(p.Grad, ReadOnlySpan g)) ps gs

/// Bitwise equality of two float arrays (NaN payloads included).
let private sameBits (a: float32[]) (b: float32[]) (what: string) =
    Expect.equal (Array.map BitConverter.SingleToInt32Bits a) (Array.map BitConverter.SingleToInt32Bits b) what

/// The optimizer's step done by hand with the backend ops: clip the trained gradients (in parameter order),
/// then AdamW with rate·factor and step counter t.
let private handStep (be: IBackend) (settings: AdamWSettings) (ps: Parameter list) (moments: Map<string, Tensor * Tensor>) (t: int) =
    let trained = ps |> List.filter (fun p -> (expectedHyper p.Name).IsSome)
    use norm = be.Allocate [| 1 |]
    be.ClipGradNorm(trained |> List.map (fun p -> p.Grad) |> ResizeArray, defaultArg settings.ClipNorm Single.PositiveInfinity, norm)
    let f = Schedule.factor settings.Schedule (t - 1)
    for p in trained do
        let lr, wd = (expectedHyper p.Name).Value
        let m, v = moments[p.Name]
        be.AdamW(p.Value, p.Grad, m, v, AdamWSpec(float32 (float lr * f), t, wd, settings.Beta1, settings.Beta2, settings.Epsilon))
    norm.ToArray()[0]

/// Runs `steps` optimizer steps and the same steps by hand from the same start; compares every value bit for bit.
let private agreesWithHandSteps (be: IBackend) (settings: AdamWSettings) (gradScale: float) (steps: int) =
    let ps = makeParameters be 1
    let hand = makeParameters be 1
    let moments = hand |> List.map (fun p -> p.Name, (be.Allocate p.Value.Shape, be.Allocate p.Value.Shape)) |> Map.ofList
    try
        use opt = new AdamW(settings, rules, ps)
        let frozenBefore = (ps |> List.find (fun p -> p.Name = "enc.norm.w")).Value.ToArray()
        for s in 0 .. steps - 1 do
            upload be ps (gradients s gradScale)
            upload be hand (gradients s gradScale)
            let stats = opt.Step()
            let handNorm = handStep be settings hand moments (s + 1)
            Expect.equal stats.Step (s + 1) "step counter"
            Expect.equal stats.GradNorm (float handNorm) $"step {s + 1}: gradient norm"
            Expect.equal stats.LrFactor (Schedule.factor settings.Schedule s) "schedule factor"
            let rate (lr: float32) = float32 (float lr * Schedule.factor settings.Schedule s)
            Expect.equal stats.LearningRates [ "attn", rate 1e-2f; "attn-bias", rate 3e-3f; "rest", rate 1e-3f ] "rates per group"
        Expect.equal opt.StepsTaken steps "steps taken"
        for p, h in List.zip ps hand do sameBits (p.Value.ToArray()) (h.Value.ToArray()) $"{be.Name}: '{p.Name}' after {steps} steps"
        for t in opt.Trained do
            let m, v = moments[t.Parameter.Name]
            sameBits (t.M.ToArray()) (m.ToArray()) $"'{t.Parameter.Name}' m"
            sameBits (t.V.ToArray()) (v.ToArray()) $"'{t.Parameter.Name}' v"
        sameBits ((ps |> List.find (fun p -> p.Name = "enc.norm.w")).Value.ToArray()) frozenBefore "frozen parameter unchanged"
        Expect.equal (opt.Trained |> List.map (fun t -> t.Parameter.Name)) [ "enc.attn.w"; "enc.attn.b"; "enc.mlp.w" ] "trained, in order"
        Expect.equal (opt.Frozen |> List.map (fun p -> p.Name)) [ "enc.norm.w" ] "frozen"
    finally
        dispose ps
        dispose hand
        for KeyValue(_, (m, v)) in moments do
            m.Dispose()
            v.Dispose()

[<Tests>]
let tests =
    testList "Training.AdamW" [
        for handle in Backends.all do
            test $"{handle.Name}: per-group rates and decay, constant schedule, no clipping" {
                let be = handle.Get()
                agreesWithHandSteps be { AdamWSettings.defaults with ClipNorm = None } 1.0 3
            }

            test $"{handle.Name}: cosine schedule with (β 0.9, 0.95) and global-norm clipping" {
                let be = handle.Get()
                // Gradients of RMS 5 over 342 trained elements: norm ≈ 90 > 1, so every step clips.
                agreesWithHandSteps be { AdamWSettings.defaults with Beta2 = 0.95f; Schedule = Schedule.Cosine 4 } 5.0 4
            }

            test $"{handle.Name}: warmup-cosine schedule with a clip that is not reached" {
                let be = handle.Get()
                agreesWithHandSteps be { AdamWSettings.defaults with ClipNorm = Some 1e6f; Schedule = Schedule.WarmupCosine(2, 5) } 1.0 5
            }

            test $"{handle.Name}: the clip norm covers trained gradients only" {
                let be = handle.Get()
                let ps = makeParameters be 2
                try
                    use opt = new AdamW(AdamWSettings.defaults, rules, ps)
                    let gs = gradients 0 1.0 |> List.mapi (fun i g -> if i = 3 then Array.map ((*) 1e6f) g else g)
                    upload be ps gs
                    let stats = opt.Step()
                    // Reference: √(Σ g²) over the three trained tensors in double; the backend sums 342 squares in
                    // fp32 and takes a root (fp32Accumulation bound, as in Ops/OptimTests.fs clipping).
                    let expected = gs |> List.take 3 |> List.sumBy (Array.sumBy (fun g -> float g * float g)) |> sqrt
                    let bound = Numeric.fp32Accumulation 1e-6 1e-7 342 * expected
                    Expect.isLessThanOrEqual (abs (stats.GradNorm - expected)) bound "norm of the trained gradients (the frozen one is 1e6 times larger)"
                finally dispose ps
            }

            test $"{handle.Name}: a non-finite gradient stops the step, names the parameter, changes nothing" {
                let be = handle.Get()
                let ps = makeParameters be 3
                try
                    use opt = new AdamW(AdamWSettings.defaults, rules, ps)
                    upload be ps (gradients 0 1.0)
                    opt.Step() |> ignore
                    let before = ps |> List.map (fun p -> p.Value.ToArray())
                    let gs = gradients 1 1.0 |> List.mapi (fun i g -> if i = 2 then (let c = Array.copy g in c[7] <- nanf; c) else g)
                    upload be ps gs
                    try
                        opt.Step() |> ignore
                        failtest "a NaN gradient was accepted"
                    with :? NonFiniteGradientException as e ->
                        Expect.equal e.Parameters [ "enc.mlp.w" ] "names the parameter"
                        Expect.equal e.Step 2 "names the step"
                        Expect.stringContains e.Message "enc.mlp.w" "message names the parameter"
                    Expect.equal opt.StepsTaken 1 "no step counted"
                    List.iter2 (fun (p: Parameter) b -> sameBits (p.Value.ToArray()) b $"'{p.Name}' unchanged") ps before
                finally dispose ps
            }

            test $"{handle.Name}: Restore continues exactly where the moments and counter left off" {
                let be = handle.Get()
                let a = makeParameters be 4
                let b = makeParameters be 4
                try
                    let settings = { AdamWSettings.defaults with Schedule = Schedule.Cosine 6 }
                    use optA = new AdamW(settings, rules, a)
                    for s in 0 .. 2 do
                        upload be a (gradients s 1.0)
                        optA.Step() |> ignore
                    // b gets a's values and moments as host arrays, as a checkpoint would hand them over.
                    List.iter2 (fun (pa: Parameter) (pb: Parameter) -> be.Upload(pb.Value, ReadOnlySpan(pa.Value.ToArray()))) a b
                    use optB = new AdamW(settings, rules, b)
                    optB.Restore(3, optA.Trained |> List.map (fun t -> t.Parameter.Name, (t.M.ToArray(), t.V.ToArray())) |> Map.ofList)
                    for s in 3 .. 5 do
                        upload be a (gradients s 1.0)
                        upload be b (gradients s 1.0)
                        let sa, sb = optA.Step(), optB.Step()
                        Expect.equal sb sa $"step {s + 1} stats"
                    List.iter2 (fun (pa: Parameter) (pb: Parameter) -> sameBits (pb.Value.ToArray()) (pa.Value.ToArray()) $"'{pa.Name}'") a b
                    Expect.throwsT<ArgumentException> (fun () -> optB.Restore(0, Map.empty)) "missing moments are rejected"
                finally
                    dispose a
                    dispose b
            }
        test "invalid settings and parameter sets are rejected" {
            let be = Backends.cpu.Get()
            let ps = makeParameters be 5
            try
                let build s r = (new AdamW(s, r, ps) :> IDisposable).Dispose()
                Expect.throwsT<ArgumentException> (fun () -> build { AdamWSettings.defaults with ClipNorm = Some 0f } rules) "clip 0"
                Expect.throwsT<ArgumentException> (fun () -> build { AdamWSettings.defaults with Beta2 = 1f } rules) "beta2 1"
                Expect.throwsT<ArgumentException> (fun () -> build { AdamWSettings.defaults with Schedule = Schedule.Cosine 0 } rules) "bad schedule"
                Expect.throwsT<ArgumentException> (fun () ->
                    build AdamWSettings.defaults [ { Group = "all"; Pattern = Everything; Treatment = Freeze } ]) "everything frozen"
                Expect.throwsT<ArgumentException> (fun () -> (new AdamW(AdamWSettings.defaults, rules, []) :> IDisposable).Dispose()) "no parameters"
            finally dispose ps
        }
    ]
