/// Stage 1 with its converted layers spread over several devices (Stage1.Stage1Trainer over workers,
/// Distill.runOn): two CPU workers give the one-CPU run bit for bit (losses, gradient norms, parameters, AdamW
/// moments; the whole distillation's student and curve, and a resume on another device list); CPU + Vulkan
/// (lavapipe) stays within float32 summation order of the CPU run; Stage 2 refuses a device list.
module TaylorCalibrate.Tests.Parallel.MultiDeviceStage1Tests

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
open TaylorCalibrate.Tests.Distill

let private ok r = r |> Result.defaultWith (fun e -> failtest (InputError.describe e))

/// (4, 16) ids from the fixture's training text.
let private ids (f: TinyDistill.Fixture) =
    let tok = ModelFiles.loadTokenizer (Path.Combine(f.TeacherDir, "tokenizer.json")) |> ok
    (Text.Corpus.tokenStream tok (Text.Corpus.documents (File.ReadAllText f.TrainText)))[.. 4 * 16 - 1]

let private bits (t: Tensor) = t.ToArray() |> Array.map BitConverter.SingleToInt32Bits

/// What 4 Stage-1 steps of two micro-batches did: per step (loss, gradient norm, per-layer losses), and
/// afterwards every GDN parameter and its AdamW moments (by name) and the steps taken.
type private Trained =
    { Steps: (float * float * float[]) list
      Parameters: (string * float32[]) list
      Moments: (string * float32[] * float32[]) list
      StepsTaken: int
      Devices: Map<int, string> }

let private train (f: TinyDistill.Fixture) (workers: DeviceWorker list) (clip: float32) (order: Stage1.LayerOrder) : Trained =
    let be = workers.Head.Backend
    let student = StudentIo.load f.StudentDir |> ok
    use t = new DeviceDecoder(be, f.Teacher)
    use s = new DeviceDecoder(be, student)
    let settings = { AdamWSettings.defaults with Beta2 = 0.95f; ClipNorm = Some clip; Schedule = Schedule.Cosine 4 }
    use trainer = new Stage1.Stage1Trainer(workers, t, s, settings, 1e-2f, 0.01f, order)
    let x = ids f
    let steps = [ for _ in 1 .. 4 -> trainer.Step([ x[.. 31]; x[32 ..] ], 2, 16) ]
    trainer.Gather()
    { Steps = steps |> List.map (fun r -> r.Report.Loss, r.Report.GradNorm, r.LayerLosses)
      Parameters = trainer.Parameters |> List.map (fun p -> p.Name, p.Value.ToArray())
      Moments = trainer.Optimizer.Trained |> List.map (fun m -> m.Parameter.Name, m.M.ToArray(), m.V.ToArray())
      StepsTaken = trainer.Optimizer.StepsTaken
      Devices = trainer.Devices }

let private withFixture (body: TinyDistill.Fixture -> unit) =
    let f = TinyDistill.create ()
    try body f finally TinyDistill.delete f

let private withCpuWorkers (body: DeviceWorker list -> unit) =
    let workers = List.ofSeq (DeviceSet.Open "cpu:0,cpu:1")
    try body workers finally for w in workers do w.Backend.Dispose()

let private silent = { new IProgress<Distill.DistillProgress> with member _.Report _ = () }

let private sources (f: TinyDistill.Fixture) : DistillInputs.DistillSources =
    { StudentDir = f.StudentDir; TeacherPath = f.TeacherDir; TrainTexts = [ f.TrainText ]; EvalText = Some f.EvalText
      SeqLen = 16; Seed = 3UL; EvalMaxTokens = None }

[<Tests>]
let tests =
    testList "Parallel.MultiDeviceStage1" [
        // Clip 1.0 is the method's (no step here reaches it: the norms are ~0.035-0.038); 0.02 lies below
        // every step's norm, so the global clip scales every step.
        for clip in [ 1.0f; 0.02f ] do
            for order in [ Stage1.OneAfterAnother; Stage1.Interleaved ] do
                test $"two CPU workers train the one-CPU Stage 1 bit for bit (clip {clip}, {order})" {
                    withFixture (fun f ->
                        let single = train f [ DeviceWorker("cpu", Backends.cpu.Get()) ] clip Stage1.OneAfterAnother
                        withCpuWorkers (fun workers ->
                            let two = train f workers clip order
                            Expect.equal two.Devices (Map [ 0, "cpu:0"; 2, "cpu:1" ]) "one converted layer per device"
                            Expect.equal two.Steps single.Steps "losses, gradient norms and per-layer losses of every step"
                            Expect.equal two.Parameters single.Parameters "every GDN parameter after 4 steps"
                            Expect.equal two.Moments single.Moments "every AdamW moment"
                            Expect.equal two.StepsTaken 4 "steps taken gathered"
                            if clip < 1.0f then
                                Expect.isTrue (single.Steps |> List.forall (fun (_, n, _) -> n > float clip)) "the clip scaled every step"))
                }

        test "CPU + Vulkan trains within float32 summation order of one CPU" {
            let cpu = Backends.cpu.Get()
            let vk = Backends.vulkan.Get()
            withFixture (fun f ->
                let single = train f [ DeviceWorker("cpu", cpu) ] 1.0f Stage1.OneAfterAnother
                let mixed = train f [ DeviceWorker("cpu:0", cpu); DeviceWorker("vulkan", vk) ] 1.0f Stage1.OneAfterAnother
                Expect.equal mixed.Devices (Map [ 0, "cpu:0"; 2, "vulkan" ]) "layer 2 on Vulkan"
                // Layer 2 runs its forward, loss and backward on Vulkan: the same sums in another order, each off
                // by ≲ K·2^-24 relative (K ≤ 64 tokens or 16 features per sum, ≈ 4e-6). The loss is a mean of
                // such values; the updates are lr·m/√v, scale-free in the gradient, so a relative gradient error
                // stays a like-sized relative error of each of the 4 updates of size ≤ lr = 1e-2 (no
                // amplification in 4 steps). Bounds: 1e-4 relative for the losses and norms, and 1e-4 of a
                // tensor's scale for the parameters. Measured on lavapipe: losses 8e-8 relative, gradient norms
                // 1e-7, parameters 1.1e-6 of their scale (v_proj), so the bounds leave ≥ 90x.
                for (l1, n1, ls1), (l2, n2, ls2) in List.zip single.Steps mixed.Steps do
                    Expect.floatClose { absolute = 0.0; relative = 1e-4 } l2 l1 "step loss"
                    Expect.floatClose { absolute = 0.0; relative = 1e-4 } n2 n1 "gradient norm"
                    for a, b in Array.zip ls1 ls2 do Expect.floatClose { absolute = 0.0; relative = 1e-4 } b a "layer loss"
                // Layer 0 trains on the CPU; unless the global clip scaled (its factor mixes in layer 2's norm)
                // nothing of Vulkan's reaches it.
                if single.Steps |> List.forall (fun (_, n, _) -> n <= 1.0) then
                    let layer0 (t: Trained) = t.Parameters |> List.filter (fun (n, _) -> n.StartsWith "model.layers.0.")
                    Expect.equal (layer0 mixed) (layer0 single) "layer 0 (on the CPU) bit-identical"
                for (name, a), (_, b) in List.zip single.Parameters mixed.Parameters do
                    let scale = a |> Array.map abs |> Array.max |> max 1e-30f
                    let gap = Array.map2 (fun p q -> abs (p - q) / scale) a b |> Array.max
                    Expect.isLessThan gap 1e-4f $"{name}: relative gap {gap}")
        }

        test "distill Stage 1 on two CPU workers writes the one-CPU student and curve, and resumes on one CPU" {
            withFixture (fun f ->
                let inputs = DistillInputs.load (sources f) |> ok
                // 4 steps of 2x2 rows of 16 tokens, a checkpoint every 2 steps.
                let options = { Distill.DistillOptions.defaults (Distill.Stage1 1e-2f) 256L with Batch = 2; Accum = 2; CheckpointEvery = 128L }
                let straight = Path.Combine(f.Root, "one-cpu")
                Distill.run (Backends.cpu.Get()) inputs options straight silent CancellationToken.None |> ok |> ignore
                let read d name = File.ReadAllBytes(Path.Combine(d, name))
                withCpuWorkers (fun workers ->
                    let two = Path.Combine(f.Root, "two-cpu")
                    Distill.runOn workers inputs options two silent CancellationToken.None |> ok |> ignore
                    Expect.isTrue (read two StudentIo.weightsFile = read straight StudentIo.weightsFile) "model.safetensors byte for byte"
                    Expect.equal (File.ReadAllText(Path.Combine(two, "curve.json"))) (File.ReadAllText(Path.Combine(straight, "curve.json")))
                        "learning curves identical"
                    // Interrupted on two workers after the first checkpoint, resumed on one CPU.
                    let moved = Path.Combine(f.Root, "moved")
                    use cts = new CancellationTokenSource()
                    let stopAtFirst =
                        { new IProgress<Distill.DistillProgress> with
                            member _.Report p = match p with Distill.Checkpointed(pt, _) when pt.Step = 2 -> cts.Cancel() | _ -> () }
                    Expect.throwsT<OperationCanceledException>
                        (fun () -> Distill.runOn workers inputs options moved stopAtFirst cts.Token |> ignore) "stopped after step 2"
                    // And the other way round: a one-CPU checkpoint resumed on two workers.
                    let back = Path.Combine(f.Root, "back")
                    use cts2 = new CancellationTokenSource()
                    let stopAtFirst2 =
                        { new IProgress<Distill.DistillProgress> with
                            member _.Report p = match p with Distill.Checkpointed(pt, _) when pt.Step = 2 -> cts2.Cancel() | _ -> () }
                    Expect.throwsT<OperationCanceledException>
                        (fun () -> Distill.run workers.Head.Backend inputs options back stopAtFirst2 cts2.Token |> ignore) "stopped after step 2"
                    let r1 = Distill.run (Backends.cpu.Get()) inputs { options with Resume = true } moved silent CancellationToken.None |> ok
                    let r2 = Distill.runOn workers inputs { options with Resume = true } back silent CancellationToken.None |> ok
                    Expect.equal (r1.StepsRun, r2.StepsRun) (2, 2) "each resumed run trains the last 2 steps"
                    for d in [ moved; back ] do
                        Expect.isTrue (read d StudentIo.weightsFile = read straight StudentIo.weightsFile) $"{Path.GetFileName d}: model.safetensors byte for byte"
                        Expect.equal (File.ReadAllText(Path.Combine(d, "curve.json"))) (File.ReadAllText(Path.Combine(straight, "curve.json")))
                            $"{Path.GetFileName d}: learning curve identical"))
        }

        test "Stage 2 refuses a device list, naming --device" {
            withFixture (fun f ->
                let inputs = DistillInputs.load (sources f) |> ok
                let options = { Distill.DistillOptions.defaults Distill.Stage.stage2Default 64L with Batch = 2 }
                withCpuWorkers (fun workers ->
                    match Distill.runOn workers inputs options (Path.Combine(f.Root, "s2")) silent CancellationToken.None with
                    | Ok _ -> failtest "Stage 2 ran on a device list"
                    | Error e ->
                        let m = InputError.describe e
                        Expect.stringContains m "--device" "names the option"
                        Expect.stringContains m "cpu:0,cpu:1" "names the list"))
        }
    ]
