/// train-teacher (Stages/TeacherShape.fs, Stages/TrainTeacher.fs): inconsistent shapes and options are input
/// errors naming the option; each family trains on a tiny corpus with a BPE trained in the test, the loss
/// falls, and the Hugging Face directory it writes loads back bit for bit equal to the trained parameters
/// (Qwen2 with q/k/v biases, Qwen3 with q/k norms); an interrupted run resumed from its checkpoint writes the
/// same bytes as an uninterrupted one. Tiny shapes on the CPU backend: no ../shared needed.
module TaylorCalibrate.Tests.Stages.TrainTeacherTests

open System
open System.IO
open System.Threading
open Expecto
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Data
open TaylorCalibrate.Pipeline.Eval
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Stages
open TaylorCalibrate.Pipeline.Text
open TaylorCalibrate.Pipeline.Training
open TaylorCalibrate.Tests

/// A few short "documents" with enough repetition for a model to learn something in a few steps.
let private corpus =
    [| for i in 0 .. 39 ->
        let name = [| "Tom"; "Mia"; "Sam"; "Lily" |][i % 4]
        let thing = [| "ball"; "kite"; "cake"; "boat"; "hat" |][i % 5]
        { Name = $"doc{i:D2}"
          Text = $"Once upon a time {name} had a red {thing}. {name} liked the {thing} very much. The {thing} was fun." } |]

let private tokenizer =
    lazy (
        let bpe = BpeTrainer.train 300 None (corpus |> Seq.map (fun d -> d.Text))
        let json = BpeTrainer.toJson bpe
        use doc = Text.Json.JsonDocument.Parse json
        (ByteLevelBpe.parse "test tokenizer" doc.RootElement |> Result.defaultWith (fun e -> failwith (InputError.describe e))) :> ITokenizer, json)

let private shape family : TeacherShape.TeacherShape =
    { Family = family; Layers = 2; Hidden = 32; Heads = 4; KvHeads = 2; HeadDim = 8; Ffn = 48
      Vocab = (fst tokenizer.Value).VocabSize; Context = 32; Tied = (family <> ModelFamily.Qwen3) }

let private options : TrainTeacher.TrainOptions =
    { TrainTeacher.TrainOptions.defaults with
        Tokens = 6L * 4L * 32L; SeqLen = 32; Batch = 4; LearningRate = 1e-2f; Warmup = 1; EvalEvery = Some 3
        CheckpointEvery = Some 3; Seed = 7UL }

let private ok r = r |> Result.defaultWith (fun e -> failtest (InputError.describe e))

let private inputFor family (out: string) : TrainTeacher.TrainInput =
    let tok, json = tokenizer.Value
    let config = TeacherShape.toConfig (shape family) |> ok
    let train, held = corpus[.. 35], corpus[36 ..]
    let stream = TokenStream.ofDocuments "corpus" tok { SeqLen = 32; Shuffle = ShuffleDocuments; Seed = 7UL } None train |> ok
    let evalTokens = Corpus.tokenStream tok (held |> Array.map (fun d -> d.Text) |> List.ofArray)
    { Config = config; TokenizerJson = json; Train = stream
      Eval = Some(Perplexity.prepare "held" config evalTokens (Some 32) None |> ok); Out = out }

let private tempOut () = Path.Combine(Path.GetTempPath(), "tc-teacher-" + Guid.NewGuid().ToString "N")

let private expectOption (option: string) (r: Result<'a, InputError>) =
    match r with
    | Error(InvalidOption(o, _)) when o = option -> ()
    | Error e -> failtest $"expected an error naming {option}, got: {InputError.describe e}"
    | Ok _ -> failtest $"expected an error naming {option}, got success"

[<Tests>]
let tests =
    testSequenced <| testList "Train teacher" [
        testCase "inconsistent shapes name their option" <| fun () ->
            let s = shape ModelFamily.Llama
            expectOption "--heads" (TeacherShape.toConfig { s with Heads = 5 })
            expectOption "--kv-heads" (TeacherShape.toConfig { s with KvHeads = 3 })
            expectOption "--head-dim" (TeacherShape.toConfig { s with HeadDim = 7 })
            expectOption "--layers" (TeacherShape.toConfig { s with Layers = 0 })

        testCase "families: Qwen2 has q/k/v biases, Qwen3 q/k norms, Llama neither" <| fun () ->
            let c f = TeacherShape.toConfig (shape f) |> ok
            Expect.isTrue ((c ModelFamily.Qwen2).QkvBias && not (c ModelFamily.Qwen2).QkNorm) "qwen2"
            Expect.isTrue ((c ModelFamily.Qwen3).QkNorm && not (c ModelFamily.Qwen3).QkvBias) "qwen3"
            Expect.isFalse ((c ModelFamily.Llama).QkvBias || (c ModelFamily.Llama).QkNorm) "llama"

        testCase "initial weights: seeded, N(0, 0.02²) matrices, residual writers scaled by 1/√(2L), norms 1, biases 0" <| fun () ->
            let c = TeacherShape.toConfig { shape ModelFamily.Qwen2 with Hidden = 64; Ffn = 256; Heads = 8; KvHeads = 2 } |> ok
            let w = TeacherShape.initialWeights 3UL c
            Expect.equal (TeacherShape.initialWeights 3UL c).Layers[1].Up w.Layers[1].Up "same seed, same weights"
            Expect.notEqual (TeacherShape.initialWeights 4UL c).Layers[1].Up w.Layers[1].Up "another seed, other weights"
            let std (a: float32[]) = sqrt (a |> Array.averageBy (fun v -> float v * float v))
            // 64·256 samples: the sample std is within a few 1/√(2n) ≈ 0.6 % of the true one.
            Expect.floatClose { absolute = 0.0; relative = 0.03 } (std w.Layers[0].Up) 0.02 "up_proj std"
            Expect.floatClose { absolute = 0.0; relative = 0.03 } (std w.Layers[0].Down) (0.02 / 2.0) "down_proj std (L = 2)"
            Expect.allEqual w.Layers[0].AttnNorm 1f "norms"
            Expect.allEqual w.Layers[0].Bq.Value 0f "biases"

        testCase "option errors: tokens under one step, warmup, sequence over the context" <| fun () ->
            let c = TeacherShape.toConfig (shape ModelFamily.Llama) |> ok
            expectOption "--tokens" (TrainTeacher.validate c { options with Tokens = 100L })
            expectOption "--seq-len" (TrainTeacher.validate c { options with SeqLen = 64 })
            expectOption "--warmup" (TrainTeacher.validate c { options with Warmup = 6 })
            expectOption "--lr" (TrainTeacher.validate c { options with LearningRate = nanf })

        testCase "a non-empty --out is refused without --resume, and nothing is written" <| fun () ->
            let out = tempOut ()
            Directory.CreateDirectory out |> ignore
            File.WriteAllText(Path.Combine(out, "keep.txt"), "mine")
            try
                let be = Backends.cpu.Get()
                expectOption "--out" (TrainTeacher.run be (inputFor ModelFamily.Llama out) options false None CancellationToken.None)
                Expect.sequenceEqual (Directory.GetFileSystemEntries out |> Array.map Path.GetFileName) [| "keep.txt" |] "untouched"
                expectOption "--resume" (TrainTeacher.checkOut out true)
            finally Directory.Delete(out, true)

        testList "families" [
          for family in [ ModelFamily.Llama; ModelFamily.Qwen2; ModelFamily.Qwen3 ] ->
            testCase $"{ModelFamily.modelType family}: trains, the loss falls, and the directory loads back bit for bit" <| fun () ->
                let be = Backends.cpu.Get()
                let out = tempOut ()
                try
                    let r = TrainTeacher.run be (inputFor family out) options false None CancellationToken.None |> ok
                    Expect.equal r.Steps 6 "steps"
                    Expect.isLessThan r.Curve[5].Loss r.Curve[0].Loss "training loss falls"
                    Expect.isSome r.FinalPerplexity "held-out perplexity at the end"
                    let loaded = HfCheckpoint.load out |> ok
                    Expect.equal loaded.Config.Family family "family"
                    Expect.equal loaded.Config.QkvBias (family = ModelFamily.Qwen2) "q/k/v biases"
                    Expect.equal loaded.Config.QkNorm (family = ModelFamily.Qwen3) "q/k norms"
                    // The last checkpoint holds the trained parameters by name: the HF files must equal them.
                    let saved = (Checkpoint.load (TrainTeacher.checkpointsDir out) |> ok).Parameters
                    let onDisk = HfLayout.tensors loaded.Config loaded.Weights |> List.map (fun (n, _, a) -> n, a) |> Map.ofList
                    Expect.equal onDisk.Count saved.Length "every parameter written"
                    for name, _, values in saved do
                        Expect.isTrue (onDisk.ContainsKey name) $"{name} in model.safetensors"
                        Expect.isTrue (Array.forall2 (fun (a: float32) b -> BitConverter.SingleToInt32Bits a = BitConverter.SingleToInt32Bits b) onDisk[name] values) $"{name} bit for bit"
                    let tok = ModelFiles.tokenizerFor out loaded.Config None |> ok
                    Expect.equal tok.VocabSize (fst tokenizer.Value).VocabSize "tokenizer.json beside the model"
                    Expect.isTrue (File.Exists(Path.Combine(out, "learning-curve.svg"))) "learning curve picture"
                finally if Directory.Exists out then Directory.Delete(out, true) ]

        testCase "interrupted after a checkpoint and resumed equals uninterrupted, bit for bit" <| fun () ->
            let be = Backends.cpu.Get()
            let whole, parts = tempOut (), tempOut ()
            try
                TrainTeacher.run be (inputFor ModelFamily.Qwen2 whole) options false None CancellationToken.None |> ok |> ignore
                use cts = new CancellationTokenSource()
                let stopAtThree = { new IProgress<TrainTeacher.Progress> with member _.Report p = if p.Step = 3 then cts.Cancel() }
                Expect.throwsT<OperationCanceledException>
                    (fun () -> TrainTeacher.run be (inputFor ModelFamily.Qwen2 parts) options false (Some stopAtThree) cts.Token |> ignore)
                    "interrupted after step 3"
                Expect.isFalse (File.Exists(Path.Combine(parts, "model.safetensors"))) "no model written by the interrupted run"
                let r = TrainTeacher.run be (inputFor ModelFamily.Qwen2 parts) options true None CancellationToken.None |> ok
                Expect.equal r.ResumedFrom (Some 3) "resumed from the step-3 checkpoint"
                Expect.equal r.Curve.Length 6 "the curve continues the saved one"
                Expect.equal (File.ReadAllBytes(Path.Combine(parts, "model.safetensors"))) (File.ReadAllBytes(Path.Combine(whole, "model.safetensors"))) "same weights, bit for bit"
            finally
                for d in [ whole; parts ] do if Directory.Exists d then Directory.Delete(d, true) ]
