/// The hybrid student end to end on a small random GQA teacher (always runs) and on stories260K (when
/// ../shared is present): zero-gate equals the teacher with those attention sublayers skipped (exactly),
/// save → load is bit-identical and config/tensor disagreements are refused, Phase 2 lowers every layer's
/// loss, and taylor-calibrate's zero-shot perplexity on held-out text is far below naive's.
module TaylorCalibrate.Tests.Stages.StudentTests

open System
open System.IO
open System.Threading
open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Eval
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Pipeline.Stages
open TaylorCalibrate.Pipeline.Text
open TaylorCalibrate.Tests

/// A random Llama-style teacher: D 16, 4 heads over 2 kv heads of 4, 3 layers, vocabulary 32.
let tinyTeacher () : Teacher =
    let c : ModelConfig =
        { Family = ModelFamily.Llama; Dim = 16; Hidden = 24; Layers = 3; Heads = 4; KvHeads = 2; HeadDim = 4; Vocab = 32
          Context = 64; NormEps = 1e-5; RopeTheta = 10000.0; RopeScaling = None; RopeLayout = RopeLayout.Adjacent
          TiedEmbeddings = false; QkvBias = false; OutputBias = false; QkNorm = false }
    let mutable seed = 100
    let rn n =
        seed <- seed + 1
        Rand.normal seed 0.3 n
    let ones n = Array.create n 1f
    let layer _ : LayerWeights =
        { AttnNorm = ones 16; Wq = rn (16 * 16); Wk = rn (8 * 16); Wv = rn (8 * 16); Wo = rn (16 * 16); Bq = None; Bk = None
          Bv = None; Bo = None; QNorm = None; KNorm = None; MlpNorm = ones 16; Gate = rn (24 * 16); Up = rn (24 * 16); Down = rn (16 * 24) }
    { Config = c
      Weights = { Embedding = rn (32 * 16); Layers = Array.init 3 layer; FinalNorm = ones 16; LmHead = Some(rn (32 * 16)) }
      Source = { Path = "tiny"; Format = "test"; DTypes = [] } }

let private tinyBatch (t: Teacher) : Calibration.CalibrationBatch =
    { Tokens = Rand.ints 9 t.Config.Vocab (2 * 40); B = 2; T = 40; Source = "random"; Documents = 1; EvalSource = None; OverlappingDocuments = 0 }

let private shortAlign = { Align.AlignOptions.defaults with Steps = 40 }

let private convertTiny (be: IBackend) strategy kept expand =
    let t = tinyTeacher ()
    let batch = tinyBatch t
    use dt = new DeviceDecoder(be, t)
    let converted = [ 0 .. t.Config.Layers - 1 ] |> List.except kept
    let trace = TeacherTrace.run dt batch converted
    let o = { Convert.ConvertOptions.defaults strategy with Expand = expand; Align = shortAlign }
    t, batch, Convert.run be t trace kept o Convert.Hooks.none CancellationToken.None

let private studentLogits (be: IBackend) (s: Student) (ids: int[]) B T =
    use m = new DeviceDecoder(be, s)
    Decoder.logits m ids B T

[<Tests>]
let tests =
    testList "Stages.Student" [
        test "zero-gate student equals the teacher with those attention sublayers skipped (bit-exact)" {
            let be = Backends.cpu.Get()
            let t, batch, (s, _) = convertTiny be Convert.InitStrategy.ZeroGate [ 1 ] GqaExpand.Heads
            let student = studentLogits be s batch.Tokens batch.B batch.T
            use dt = new DeviceDecoder(be, t)
            let r = Decoder.forward dt batch.Tokens batch.B batch.T { Decoder.ForwardOptions.none with SkipAttention = set [ 0; 2 ] }
            let skipped = (use l = r.Logits in l.ToArray())
            Expect.isTrue (student = skipped) "logits identical"
            let full = Decoder.logits dt batch.Tokens batch.B batch.T
            Expect.isFalse (student = full) "and different from the full teacher"
        }

        test "save -> load is bit-identical; config/tensor disagreement is refused" {
            let be = Backends.cpu.Get()
            let _, batch, (s, _) = convertTiny be Convert.InitStrategy.TaylorCalibrate [ 2 ] GqaExpand.Rows
            let dir = Path.Combine(Path.GetTempPath(), $"tc-student-{Guid.NewGuid():N}")
            try
                StudentIo.save dir s None
                let loaded = StudentIo.load dir |> Result.defaultWith (fun e -> failtest (InputError.describe e))
                Expect.equal loaded.Kept [ 2 ] "kept"
                Expect.equal loaded.GqaExpand GqaExpand.Rows "expansion"
                Expect.equal loaded.Init "taylor-calibrate" "init"
                let a = studentLogits be s batch.Tokens batch.B batch.T
                let b = studentLogits be loaded batch.Tokens batch.B batch.T
                Expect.isTrue (a = b) "logits bit-identical after reload"
                // A config that keeps another layer no longer matches the tensors.
                let cfg = Path.Combine(dir, "config.json")
                File.WriteAllText(cfg, File.ReadAllText(cfg).Replace("\"keep_full_attention_layers\": [\n    2\n  ]", "\"keep_full_attention_layers\": [\n    1\n  ]"))
                match StudentIo.load dir with
                | Ok _ -> failtest "a disagreeing config must be refused"
                | Error e -> Expect.stringContains (InputError.describe e) "tensor" "names the tensor"
            finally
                try Directory.Delete(dir, true) with _ -> ()
        }

        test "Phase 2 lowers every layer's loss and restores the best parameters" {
            let be = Backends.cpu.Get()
            let _, _, (_, reports) = convertTiny be Convert.InitStrategy.AlignmentOnly [ 0 ] GqaExpand.Heads
            for r in reports do
                let a = r.Alignment.Value
                Expect.isLessThan a.BestLoss a.Losses[0] $"layer {r.Layer}: best {a.BestLoss} < initial {a.Losses[0]}"
                Expect.floatClose Accuracy.medium r.Fit.Mse a.BestLoss $"layer {r.Layer}: restored parameters reproduce the best loss"
        }

        test "stories260K: taylor-calibrate zero-shot PPL far below naive's (1 and 2 of 5 layers kept)" {
            let model = Shared.requireShared "models/stories260K/stories260K.bin"
            let calib = Shared.requireShared "data/tinystories/valid-head.txt"
            let evalText = Shared.requireShared "data/tinystories/valid-far.txt"
            let be = Backends.cpu.Get()
            let t = ModelFiles.loadTeacher model |> Result.defaultWith (fun e -> failtest (InputError.describe e))
            let tok = ModelFiles.tokenizerFor model t.Config None |> Result.defaultWith (fun e -> failtest (InputError.describe e))
            let evalDocs = Corpus.readDocuments evalText |> Result.defaultWith (fun e -> failtest (InputError.describe e))
            let calibDocs = Corpus.readDocuments calib |> Result.defaultWith (fun e -> failtest (InputError.describe e))
            let batch =
                Calibration.build Calibration.CalibrationOptions.defaults tok calib calibDocs (Some(evalText, evalDocs))
                |> Result.defaultWith (fun e -> failtest (InputError.describe e))
            // 8 windows of 512 held-out tokens keep the test short.
            let set = Perplexity.prepare evalText t.Config (Corpus.tokenStream tok evalDocs) None (Some(8 * 512)) |> Result.defaultWith (fun e -> failtest (InputError.describe e))
            use dt = new DeviceDecoder(be, t)
            let ppl (s: Student) =
                use m = new DeviceDecoder(be, s)
                let lm = Perplexity.decoderModel m
                (Perplexity.evaluateModel lm None set None CancellationToken.None).Perplexity
            // Measured with 100 steps, seed 0, head-wise expansion, 8 windows of valid-far: kept [0] naive 33.5 vs
            // taylor-calibrate 9.34 (3.6x); kept [0; 2] 14.9 vs 6.97 (2.1x). The bounds leave ~30 % slack for
            // platform-dependent rounding in 100 AdamW steps while still demanding a large gap.
            for kept, bound in [ [ 0 ], 2.5; [ 0; 2 ], 1.6 ] do
                let converted = [ 0 .. 4 ] |> List.except kept
                let trace = TeacherTrace.run dt batch converted
                let run strategy =
                    // 100 alignment steps instead of 300 keep the test under a minute.
                    let o = { Convert.ConvertOptions.defaults strategy with Align = { Align.AlignOptions.defaults with Steps = 100 } }
                    Convert.run be t trace kept o Convert.Hooks.none CancellationToken.None |> fst |> ppl
                let naive = run Convert.InitStrategy.Naive
                let tc = run Convert.InitStrategy.TaylorCalibrate
                printfn "stories260K kept %A: naive PPL %.1f, taylor-calibrate PPL %.2f, ratio %.1f" kept naive tc (naive / tc)
                Expect.isLessThan (tc * bound) naive $"kept {kept}: taylor-calibrate {tc} should be at least {bound}x below naive {naive}"
        }
    ]
