/// Resume is exact, on every backend: the toy model trained N steps in one go equals the same run trained k
/// steps, checkpointed, reloaded into fresh tensors (another initialisation, a fresh optimizer and RNG) and
/// trained N − k more, bit for bit in every parameter and moment and in every reported loss. The run uses
/// everything a real one does: a warmup-cosine schedule (so the step counter matters), two micro-batches,
/// clipping, an epoch-shuffled data stream whose position is checkpointed, and an RNG drawn every step (target
/// jitter) whose state is checkpointed.
module TaylorCalibrate.Tests.Training.ResumeTests

open System
open System.IO
open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Training
open TaylorCalibrate.Tests
open TaylorCalibrate.Tests.Training.ToyModel

let private dims = { In = 7; Out = 4 }
let private rowsInData, batch, totalSteps, seed = 40, 16, 9, 2026UL
let private settings = { AdamWSettings.defaults with Beta2 = 0.95f; Schedule = Schedule.WarmupCosine(2, totalSteps) }
let private identity : Checkpoint.RunIdentity =
    { ModelFingerprint = $"toy {dims.In}x{dims.Out}"; Settings = Map [ "batch", string batch; "seed", string seed ] }

/// A seekable stream of shuffled rows: position (epoch, row within the epoch's permutation); each epoch's
/// permutation comes from its own RNG stream, so a position alone is enough to continue.
type private RowStream(position: int64[]) =
    let mutable epoch = int position[0]
    let mutable offset = int position[1]
    let permutation e = (Rng.ForPurpose(seed, $"epoch-{e}")).Permutation rowsInData
    let mutable order = permutation epoch
    member _.Position = [| int64 epoch; int64 offset |]
    member _.Next(n: int) =
        Array.init n (fun _ ->
            if offset = rowsInData then
                epoch <- epoch + 1
                offset <- 0
                order <- permutation epoch
            offset <- offset + 1
            order[offset - 1])

/// Runs steps until `stopAt` steps are taken (from wherever the optimizer is), drawing rows and jitter.
let private trainUntil (be: IBackend) (toy: Toy) (opt: AdamW) (stream: RowStream) (jitter: Rng) (stopAt: int) =
    let x, y = dataset dims rowsInData 77
    [ while opt.StepsTaken < stopAt do
        let picked = stream.Next batch
        let xs = picked |> Array.collect (fun r -> rows x dims.In r 1)
        let ys = picked |> Array.collect (fun r -> rows y dims.Out r 1) |> Array.map (fun v -> v + float32 (0.01 * jitter.NextNormal()))
        let half = batch / 2
        let report =
            Trainer.step opt 2 (fun mb ->
                lossAndGrad be toy (rows xs dims.In (mb.Index * half) half) (rows ys dims.Out (mb.Index * half) half) mb.Weight)
        yield report ]

let private snapshot (opt: AdamW) =
    [ for p in opt.Parameters -> p.Name, Array.map BitConverter.SingleToInt32Bits (p.Value.ToArray())
      for t in opt.Trained do
          yield "m/" + t.Parameter.Name, Array.map BitConverter.SingleToInt32Bits (t.M.ToArray())
          yield "v/" + t.Parameter.Name, Array.map BitConverter.SingleToInt32Bits (t.V.ToArray()) ]

[<Tests>]
let tests =
    testList "Training.Resume" [
        for handle in Backends.all do
            for k in [ 1; 4 ] do
                test $"{handle.Name}: {totalSteps} steps in one go equal {k} steps, checkpoint, fresh reload, {totalSteps - k} more" {
                    let be = handle.Get()
                    let rules = ParameterGroups.Presets.single 0.05f 0.01f
                    // Uninterrupted.
                    let straight, straightReports =
                        use toy = create be dims 11
                        use opt = new AdamW(settings, rules, toy.Parameters)
                        let reports = trainUntil be toy opt (RowStream [| 0L; 0L |]) (Rng.ForPurpose(seed, "jitter")) totalSteps
                        snapshot opt, reports
                    // Interrupted after k steps.
                    let dir = Path.Combine(Path.GetTempPath(), $"tc-resume-{Guid.NewGuid():N}")
                    try
                        let firstReports =
                            use toy = create be dims 11
                            use opt = new AdamW(settings, rules, toy.Parameters)
                            let stream = RowStream [| 0L; 0L |]
                            let jitter = Rng.ForPurpose(seed, "jitter")
                            let reports = trainUntil be toy opt stream jitter k
                            Checkpoint.save dir identity
                                { Step = opt.StepsTaken; DataPosition = stream.Position; Rngs = Map [ "jitter", jitter.State ]; Extra = Map.empty } opt
                            reports
                        let resumed, resumedReports =
                            use toy = create be dims 999 // other initial values: everything must come from the checkpoint
                            use opt = new AdamW(settings, rules, toy.Parameters)
                            match Checkpoint.resume dir identity opt with
                            | Error e -> failtest $"resume: {InputError.describe e}"
                            | Ok(state, warnings) ->
                                Expect.isEmpty warnings "no fallback"
                                let reports = trainUntil be toy opt (RowStream state.DataPosition) (Rng state.Rngs["jitter"]) totalSteps
                                snapshot opt, reports
                        Expect.equal (firstReports @ resumedReports) straightReports "losses, gradient norms and rates of every step"
                        Expect.equal resumed straight "every parameter and moment, bit for bit"
                        Expect.isLessThan (List.last straightReports).Loss straightReports.Head.Loss "the run did train"
                    finally
                        try Directory.Delete(dir, true) with _ -> ()
                }
    ]
