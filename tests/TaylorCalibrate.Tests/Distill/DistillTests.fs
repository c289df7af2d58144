/// Distillation on the tiny fixture (TinyDistill.fs): Stage 2 lowers the KL in one step, Stage 1 lowers every
/// layer's loss and does not depend on the order its layers run in, an interrupted run resumed from its
/// checkpoint equals an uninterrupted one bit for bit, and the inputs check refuses a student of another
/// teacher and a checkpoint of another run, naming the difference. Tokens-to-target interpolation.
module TaylorCalibrate.Tests.Distill.DistillTests

open System
open System.IO
open System.Threading
open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Distill
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Pipeline.Training
open TaylorCalibrate.Tests

let private ok r = r |> Result.defaultWith (fun e -> failtest (InputError.describe e))

/// A fixed batch of (B, T) ids from the fixture's training text.
let private batch (f: TinyDistill.Fixture) (B: int) (T: int) =
    let tok = ModelFiles.loadTokenizer (Path.Combine(f.TeacherDir, "tokenizer.json")) |> ok
    let ids = Text.Corpus.tokenStream tok (Text.Corpus.documents (File.ReadAllText f.TrainText))
    ids[.. B * T - 1]

let private settings schedule =
    { AdamWSettings.defaults with Beta2 = 0.95f; Schedule = schedule }

let private bits (t: Tensor) = t.ToArray() |> Array.map BitConverter.SingleToInt32Bits

let private sources (f: TinyDistill.Fixture) : DistillInputs.DistillSources =
    { StudentDir = f.StudentDir; TeacherPath = f.TeacherDir; TrainTexts = [ f.TrainText ]; EvalText = Some f.EvalText
      SeqLen = 16; Seed = 3UL; EvalMaxTokens = None }

let private silent = { new IProgress<Distill.DistillProgress> with member _.Report _ = () }

let private withFixture (body: TinyDistill.Fixture -> unit) =
    let f = TinyDistill.create ()
    try body f finally TinyDistill.delete f

[<Tests>]
let tests =
    testList "Distill" [
        for handle in Backends.all do
            test $"{handle.Name}: one Stage-2 step lowers the KL on a fixed batch" {
                let be = handle.Get()
                withFixture (fun f ->
                    let student = StudentIo.load f.StudentDir |> ok
                    use t = new DeviceDecoder(be, f.Teacher)
                    use s = new DeviceDecoder(be, student)
                    // A larger rate than the method's 1e-4/7e-6, so that one step's change stands far above fp32
                    // rounding of the KL (~1e-7 relative) on this tiny model.
                    use trainer = new Stage2.Stage2Trainer(t, s, settings Schedule.Constant, ParameterGroups.Presets.stage2 3e-3f 3e-3f 0.01f, false)
                    let ids = batch f 4 16
                    let before = trainer.Kl(ids, 4, 16)
                    let report = trainer.Step([ ids[.. 31]; ids[32 ..] ], 2, 16)
                    let after = trainer.Kl(ids, 4, 16)
                    Expect.floatClose Accuracy.medium report.Loss before "the step reports the KL before its update (two micro-batches)"
                    Expect.isGreaterThan before 1e-3 "the naive student starts away from the teacher"
                    Expect.isLessThan after (before * 0.999) $"KL {before} -> {after}")
            }

            test $"{handle.Name}: Stage 1 lowers every converted layer's loss" {
                let be = handle.Get()
                withFixture (fun f ->
                    let student = StudentIo.load f.StudentDir |> ok
                    use t = new DeviceDecoder(be, f.Teacher)
                    use s = new DeviceDecoder(be, student)
                    let steps = 15
                    use trainer = new Stage1.Stage1Trainer(t, s, settings (Schedule.Cosine steps), 1e-2f, 0.01f, Stage1.OneAfterAnother)
                    Expect.equal trainer.Layers [ 0; 2 ] "layers 0 and 2 are GDN, layer 1 kept"
                    let ids = batch f 4 16
                    let before = trainer.LayerLosses(ids, 4, 16)
                    for _ in 1 .. steps do trainer.Step([ ids ], 4, 16) |> ignore
                    let after = trainer.LayerLosses(ids, 4, 16)
                    for k in 0 .. before.Length - 1 do
                        Expect.isLessThan after[k] (before[k] * 0.95) $"layer {trainer.Layers[k]}: {before[k]} -> {after[k]}")
            }

            test $"{handle.Name}: Stage 1 gives the same bits with layers run one after another or interleaved" {
                let be = handle.Get()
                withFixture (fun f ->
                    let student = StudentIo.load f.StudentDir |> ok
                    let ids = batch f 4 16
                    let train order =
                        use t = new DeviceDecoder(be, f.Teacher)
                        use s = new DeviceDecoder(be, student)
                        use trainer = new Stage1.Stage1Trainer(t, s, settings (Schedule.Cosine 4), 1e-2f, 0.01f, order)
                        let reports = [ for k in 0 .. 3 -> trainer.Step([ ids[.. 31]; ids[32 ..] ], 2, 16) ]
                        reports |> List.map (fun r -> r.Report.Loss, r.Report.GradNorm, r.LayerLosses),
                        trainer.Parameters |> List.map (fun p -> p.Name, bits p.Value)
                    let a = train Stage1.OneAfterAnother
                    let b = train Stage1.Interleaved
                    Expect.equal (fst b) (fst a) "losses and gradient norms of every step"
                    Expect.equal (snd b) (snd a) "every GDN parameter, bit for bit")
            }

        for stage in [ Distill.Stage1 1e-2f; Distill.Stage2(3e-3f, 1e-3f) ] do
            let n = Distill.Stage.number stage
            test $"cpu: Stage {n}: interrupted after a checkpoint and resumed equals the uninterrupted run, bit for bit" {
                let be = Backends.cpu.Get()
                withFixture (fun f ->
                    let inputs = DistillInputs.load (sources f) |> ok
                    // 6 steps of 2x2 rows of 16 tokens (64 tokens each), a checkpoint every 2 steps.
                    let options = { Distill.DistillOptions.defaults stage 384L with Batch = 2; Accum = 2; CheckpointEvery = 128L }
                    let straight = Path.Combine(f.Root, "straight")
                    let r1 = Distill.run be inputs options straight silent CancellationToken.None |> ok
                    Expect.equal r1.Steps 6 "6 steps"
                    let interrupted = Path.Combine(f.Root, "interrupted")
                    use cts = new CancellationTokenSource()
                    let stopAfterSecond =
                        { new IProgress<Distill.DistillProgress> with
                            member _.Report p =
                                match p with
                                | Distill.Checkpointed(pt, _) when pt.Step = 4 -> cts.Cancel()
                                | _ -> () }
                    Expect.throwsT<OperationCanceledException>
                        (fun () -> Distill.run be inputs options interrupted stopAfterSecond cts.Token |> ignore) "stopped after step 4"
                    Expect.isFalse (File.Exists(Path.Combine(interrupted, StudentIo.weightsFile))) "no student written by the interrupted run"
                    let r2 = Distill.run be inputs { options with Resume = true } interrupted silent CancellationToken.None |> ok
                    Expect.equal r2.StepsRun 2 "the resumed run trains the last 2 steps"
                    let read d = File.ReadAllBytes(Path.Combine(d, StudentIo.weightsFile))
                    Expect.isTrue (read straight = read interrupted) "model.safetensors identical byte for byte"
                    Expect.equal (File.ReadAllText(Path.Combine(interrupted, "curve.json"))) (File.ReadAllText(Path.Combine(straight, "curve.json")))
                        "the learning curves (losses and held-out PPL at every checkpoint) are identical"
                    let c = r1.Curve
                    Expect.equal (c.Points |> List.map (fun p -> p.Tokens)) [ 0L; 128L; 256L; 384L ] "a point before training and at each checkpoint"
                    Expect.isLessThan (List.last c.Points).HeldOutKl (List.head c.Points).HeldOutKl "the held-out KL fell"
                    // The distilled student loads as a student directory and knows its teacher.
                    let reloaded = DistillInputs.load { sources f with StudentDir = straight } |> ok
                    Expect.equal reloaded.Student.Kept [ 1 ] "same kept layers")
            }

        test "a student refuses a teacher of another shape or other weights, naming the mismatch" {
            withFixture (fun f ->
                let other (dir: string) (t: Teacher) =
                    let p = Path.Combine(f.Root, dir)
                    TinyDistill.writeTeacher p t (File.ReadAllText(Path.Combine(f.TeacherDir, "tokenizer.json")))
                    p
                let wider = other "wider" (TinyDistill.randomTeacher { f.Teacher.Config with Hidden = 48 } 7)
                let reseeded = other "reseeded" (TinyDistill.randomTeacher f.Teacher.Config 8)
                match DistillInputs.load { sources f with TeacherPath = wider } with
                | Ok _ -> failtest "a wider teacher was accepted"
                | Error e -> Expect.stringContains (InputError.describe e) "intermediate_size is 48 there but 32" "names the field"
                match DistillInputs.load { sources f with TeacherPath = reseeded } with
                | Ok _ -> failtest "a teacher with other weights was accepted"
                | Error e ->
                    let m = InputError.describe e
                    Expect.stringContains m "--teacher" "names the option"
                    Expect.stringContains m "embedding" "names the weights that differ")
        }

        test "a checkpoint of another run is refused, naming the differing setting" {
            let be = Backends.cpu.Get()
            withFixture (fun f ->
                let inputs = DistillInputs.load (sources f) |> ok
                let options = { Distill.DistillOptions.defaults (Distill.Stage1 1e-2f) 128L with Batch = 2; CheckpointEvery = 64L }
                let out = Path.Combine(f.Root, "out")
                Distill.run be inputs options out silent CancellationToken.None |> ok |> ignore
                match Distill.run be inputs { options with Batch = 4; Resume = true } out silent CancellationToken.None with
                | Ok _ -> failtest "resumed with another batch"
                | Error e -> Expect.stringContains (InputError.describe e) "setting 'batch' is '2' there but '4' now" "names the setting"
                match Distill.run be inputs options out silent CancellationToken.None with
                | Ok _ -> failtest "overwrote the checkpoints of a run without --resume"
                | Error e -> Expect.stringContains (InputError.describe e) "--resume" "says how to continue")
        }

        test "tokens to a target PPL interpolate linearly between checkpoints" {
            let pt step tokens ppl : LearningCurve.CurvePoint = { Step = step; Tokens = tokens; Perplexity = ppl; Loss = nan; HeldOutKl = nan }
            let pts = [ pt 0 0L 20.0; pt 1 100L 10.0; pt 2 200L 6.0 ]
            Expect.equal (LearningCurve.tokensTo 8.0 pts) (LearningCurve.Interpolated 150.0) "halfway between 10 and 6"
            Expect.equal (LearningCurve.tokensTo 15.0 pts) (LearningCurve.Interpolated 50.0) "halfway between 20 and 10"
            Expect.equal (LearningCurve.tokensTo 25.0 pts) (LearningCurve.AtFirstPoint 0L) "already below at the first point"
            Expect.equal (LearningCurve.tokensTo 5.0 pts) LearningCurve.NotReached "never reached"
        }

        test "the curve's picture: held-out PPL when measured, else the training loss, else none" {
            let pt tokens ppl loss : LearningCurve.CurvePoint = { Step = int tokens; Tokens = tokens; Perplexity = ppl; Loss = loss; HeldOutKl = nan }
            let curve pts : LearningCurve.Curve = { Stage = 2; TeacherPerplexity = nan; Points = pts }
            match LearningCurve.toChart (curve [ pt 0L 20.0 nan; pt 100L 10.0 0.5 ]) with
            | Some c -> Expect.stringContains c.Title "perplexity" "PPL when measured"
            | None -> failtest "a measured curve has a picture"
            match LearningCurve.toChart (curve [ pt 0L nan nan; pt 100L nan 0.5; pt 200L nan 0.25 ]) with
            | Some c -> Expect.stringContains c.Title "training loss" "the loss without an evaluation text"
            | None -> failtest "a trained curve has a picture"
            Expect.isNone (LearningCurve.toChart (curve [ pt 0L nan nan ])) "nothing to draw before the first step"
        }
    ]
