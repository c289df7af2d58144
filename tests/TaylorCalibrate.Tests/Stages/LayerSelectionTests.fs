/// Retained-layer selection (Stages/LayerSelection.fs): the uniform rule against the reference at 25 %, k
/// from a count or a fraction, the ranking and its ties, AR and GA-S2 picking the known answer on constructed
/// teachers, GA-S2's shared conversion equal to converting each one-layer hybrid separately, the selection
/// file's round trip, and refusing a selection made for another teacher.
module TaylorCalibrate.Tests.Stages.LayerSelectionTests

open System
open System.IO
open System.Threading
open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Eval
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Stages
open TaylorCalibrate.Pipeline.Stages.LayerSelection
open TaylorCalibrate.Tests

/// A random Llama-style teacher (D 16, 4 heads over 2 kv heads of 4, vocabulary 32) whose layer i has its
/// o_proj scaled by woScale[i]: how much each layer's attention sublayer contributes to the residual stream.
let private teacher (seed: int) (woScale: float32 list) : Teacher =
    let L = woScale.Length
    let c : ModelConfig =
        { Family = ModelFamily.Llama; Dim = 16; Hidden = 24; Layers = L; Heads = 4; KvHeads = 2; HeadDim = 4; Vocab = 32
          Context = 64; NormEps = 1e-5; RopeTheta = 10000.0; RopeScaling = None; RopeLayout = RopeLayout.Adjacent
          TiedEmbeddings = false; QkvBias = false; OutputBias = false; QkNorm = false }
    let mutable s = seed
    let rn n =
        s <- s + 1
        Rand.normal s 0.3 n
    let ones n = Array.create n 1f
    let layer i : LayerWeights =
        { AttnNorm = ones 16; Wq = rn (16 * 16); Wk = rn (8 * 16); Wv = rn (8 * 16); Wo = rn (16 * 16) |> Array.map ((*) woScale[i])
          Bq = None; Bk = None; Bv = None; Bo = None; QNorm = None; KNorm = None; MlpNorm = ones 16; Gate = rn (24 * 16)
          Up = rn (24 * 16); Down = rn (16 * 24) }
    { Config = c
      Weights = { Embedding = rn (32 * 16); Layers = Array.init L layer; FinalNorm = ones 16; LmHead = Some(rn (32 * 16)) }
      Source = { Path = "constructed"; Format = "test"; DTypes = [] } }

/// `windows` windows of W tokens sampled from the teacher itself (temperature 1). On its own samples the
/// teacher's expected NLL is minimal (Gibbs' inequality), so any change to it raises the expected PPL by its
/// KL divergence: the larger the change, the larger the increase.
let private ownSamples (be: IBackend) (t: Teacher) (windows: int) (W: int) (seed: int) : Perplexity.EvalSet =
    use dt = new DeviceDecoder(be, t)
    let V = t.Config.Vocab
    let rng = Random seed
    let ids = Array.zeroCreate (windows * W)
    for b in 0 .. windows - 1 do ids[b * W] <- rng.Next V
    for n in 1 .. W - 1 do
        let prefix = Array.init (windows * n) (fun i -> ids[(i / n) * W + i % n])
        let logits = Decoder.logits dt prefix windows n // (windows, n, V)
        for b in 0 .. windows - 1 do ids[b * W + n] <- Generate.sample rng logits (b * n + n - 1) V 1.0
    Perplexity.prepare "teacher samples" t.Config ids (Some W) None |> Result.defaultWith (fun e -> failtest (InputError.describe e))

let private evalInput set : EvalInput = { Source = "teacher samples"; Set = set }

let private calibration (t: Teacher) : Calibration.CalibrationBatch =
    { Tokens = Rand.ints 9 t.Config.Vocab (2 * 40); B = 2; T = 40; Source = "random"; Documents = 1; EvalSource = None; OverlappingDocuments = 0 }

let private setup strategy (batch: Calibration.CalibrationBatch option) steps =
    let o = { Convert.ConvertOptions.defaults strategy with Align = { Align.AlignOptions.defaults with Steps = steps } }
    GaS2Setup.create o batch |> Result.defaultWith (fun e -> failtest (InputError.describe e))

let private describe (scores: LayerScore list) =
    scores |> List.map (fun s -> $"layer {s.Layer}: PPL {s.Perplexity:F4}, score {s.Score:F4}") |> String.concat "; "

let private score layer value : LayerScore = { Layer = layer; Perplexity = value; Score = value }

[<Tests>]
let tests =
    testList "Stages.LayerSelection" [
        test "uniform at 25 % of 28 layers is the reference's [0,4,...,24]" {
            let k = KeepCount.resolve 28 (Fraction 0.25) |> Result.defaultWith (fun e -> failtest (InputError.describe e))
            Expect.equal k 7 "k = round(0.25·28)"
            Expect.equal (LayerPolicy.uniformCount 28 k) [ 0; 4; 8; 12; 16; 20; 24 ] "every 4th layer from 0"
            Expect.equal (LayerPolicy.uniformCount 5 2) [ 0; 2 ] "⌊i·L/k⌋ with L = 5, k = 2"
            let t = teacher 1 [ 1f; 1f; 1f; 1f ]
            let s = run (Backends.cpu.Get()) { Teacher = t; TeacherPath = "constructed"; K = 2; Plan = Plan.Uniform } None CancellationToken.None
            Expect.equal s.Kept [ 0; 2 ] "the stage applies the same rule"
            Expect.isNone s.Measured "uniform measures nothing"
        }

        test "k from a count or a fraction; out-of-range values name their option" {
            let ok r = r |> Result.defaultWith (fun e -> failtest (InputError.describe e))
            Expect.equal (ok (KeepCount.resolve 5 (Count 5))) 5 "k = L is allowed"
            Expect.equal (ok (KeepCount.resolve 5 (Fraction 1.0))) 5 "f = 1 keeps every layer"
            Expect.equal (ok (KeepCount.resolve 5 (Fraction 0.01))) 1 "at least one layer"
            for keep, option in [ Count 0, "--keep"; Count 6, "--keep"; Fraction 0.0, "--keep-fraction"; Fraction 1.5, "--keep-fraction"
                                  Fraction nan, "--keep-fraction"; Fraction -0.25, "--keep-fraction" ] do
                match KeepCount.resolve 5 keep with
                | Ok k -> failtest $"{keep} gave k = {k}"
                | Error e -> Expect.stringStarts (InputError.describe e) option $"{keep} names {option}"
        }

        test "policies parse; --init belongs to ga-s2; calibrated inits need a batch" {
            Expect.equal (Policy.parse "ga-s2" None) (Ok(Policy.GaS2 Convert.InitStrategy.TaylorCalibrate)) "default init"
            Expect.equal (Policy.parse "ar" None) (Ok Policy.Ar) "ar"
            for name, init in [ "magic", None; "ar", Some Convert.InitStrategy.Naive; "uniform", Some Convert.InitStrategy.Naive ] do
                Expect.isError (Policy.parse name init) $"{name} with {init}"
            let o s = Convert.ConvertOptions.defaults s
            for s in Convert.InitStrategy.all do
                let needs = s <> Convert.InitStrategy.Naive && s <> Convert.InitStrategy.ZeroGate
                Expect.equal (Result.isError (GaS2Setup.create (o s) None)) needs $"{Convert.InitStrategy.name s} without a batch"
        }

        test "ranking keeps the largest (AR) or smallest (GA-S2) scores; ties go to the lower index; NaN is refused" {
            let scores = [ score 0 2.0; score 1 5.0; score 2 5.0; score 3 1.0; score 4 5.0 ]
            Expect.equal (choose 2 true scores) [ 1; 2 ] "largest, tie between 1, 2, 4 to the lower indices"
            Expect.equal (choose 2 false scores) [ 0; 3 ] "smallest"
            Expect.equal (choose 2 false [ score 3 1.0; score 1 1.0; score 0 7.0 ]) [ 1; 3 ] "result ascending"
            Expect.throws (fun () -> choose 1 true [ score 0 1.0; score 1 nan ] |> ignore) "NaN score"
            Expect.equal (choose 1 true [ score 0 1.0; score 1 infinity ]) [ 1 ] "an infinite increase ranks first"
        }

        test "AR ranks the layer whose o_proj is near zero last and the dominant attention first" {
            let be = Backends.cpu.Get()
            // Layer 0's attention adds ~1e-4 of a normal sublayer; layer 2's ten times more than layers 1 and 3.
            let t = teacher 20 [ 1e-4f; 0.3f; 3f; 0.3f ]
            let set = ownSamples be t 16 48 5
            let s = run be { Teacher = t; TeacherPath = "constructed"; K = 3; Plan = Plan.Ar(evalInput set) } None CancellationToken.None
            let m = s.Measured.Value
            let byScore = m.Scores |> List.sortBy (fun x -> -x.Score) |> List.map (fun x -> x.Layer)
            Expect.equal (List.head byScore) 2 $"dominant attention first ({describe m.Scores})"
            Expect.equal (List.last byScore) 0 $"near-zero attention last ({describe m.Scores})"
            Expect.equal s.Kept [ 1; 2; 3 ] "top 3 by PPL increase"
            for x in m.Scores do
                Expect.floatClose Accuracy.veryHigh x.Score (x.Perplexity - m.TeacherPerplexity) $"layer {x.Layer}: score = ΔPPL"
            Expect.isLessThan (abs m.Scores[0].Score) (0.01 * m.Scores[2].Score) "removing a ~zero sublayer changes almost nothing"
        }

        test "GA-S2 keeps the layer whose attention carries the model (naive init)" {
            let be = Backends.cpu.Get()
            // Layers 0 and 2 add almost nothing (their GDN replacements, which copy o_proj, add almost nothing
            // too); layer 1 carries the model: only the hybrid keeping it stays close to the teacher.
            let t = teacher 40 [ 1e-3f; 3f; 1e-3f ]
            let set = ownSamples be t 16 48 6
            let plan = Plan.GaS2(evalInput set, setup Convert.InitStrategy.Naive None 1)
            let s = run be { Teacher = t; TeacherPath = "constructed"; K = 1; Plan = plan } None CancellationToken.None
            let m = s.Measured.Value
            Expect.equal s.Kept [ 1 ] $"the layer carrying the model ({describe m.Scores})"
            Expect.equal s.Policy (Policy.GaS2 Convert.InitStrategy.Naive) "policy with its init"
            let best = m.Scores[1].Perplexity
            Expect.isLessThan best (1.05 * m.TeacherPerplexity) $"keeping it is close to the teacher ({describe m.Scores}; teacher {m.TeacherPerplexity:F4})"
        }

        test "GA-S2's one-layer hybrids equal converting each separately (taylor-calibrate)" {
            let be = Backends.cpu.Get()
            let t = teacher 60 [ 1f; 1f; 1f ]
            let batch = calibration t
            let su = setup Convert.InitStrategy.TaylorCalibrate (Some batch) 4
            use dt = new DeviceDecoder(be, t)
            let all = Models.convertAll be dt t su ignore CancellationToken.None
            for i in 0 .. 2 do
                let converted = [ 0 .. 2 ] |> List.except [ i ]
                let trace = TeacherTrace.run dt batch converted
                let separate, _ = Convert.run be t trace [ i ] su.Options Convert.Hooks.none CancellationToken.None
                let shared = Models.keepOnly all i
                Expect.equal shared.Kept separate.Kept $"layer {i}: kept"
                Expect.isTrue (shared.Gdn = separate.Gdn) $"layer {i}: GDN weights bit-identical"
                Expect.equal shared.Init "taylor-calibrate" "init recorded"
        }

        test "the selection file round-trips, non-finite scores included" {
            let t = teacher 80 [ 1f; 1f; 1f ]
            let s : Selection =
                { Teacher = TeacherIdentity.ofTeacher "somewhere/model" t; Policy = Policy.GaS2 Convert.InitStrategy.TaylorCalibrate
                  Layers = 3; K = 2; Kept = [ 0; 2 ]
                  Measured =
                    Some { EvalText = "eval.txt"; Window = 48; Windows = 16; TeacherPerplexity = 3.25
                           Scores = [ score 0 1.5; score 1 infinity; score 2 (1.0 / 3.0) ]
                           Calibration = Some { Text = "calib.txt"; B = 4; T = 256 } }
                  Seconds = 12.5 }
            let path = Path.Combine(CliRunner.tempDir (), "sel.json")
            LayerSelectionFile.write path s
            let back = LayerSelectionFile.read path |> Result.defaultWith (fun e -> failtest (InputError.describe e))
            Expect.equal back s "read equals written"
            let uniform = { s with Policy = Policy.Uniform; Measured = None }
            LayerSelectionFile.write path uniform
            Expect.equal (LayerSelectionFile.read path) (Ok uniform) "uniform round trip"
        }

        test "a damaged selection file names the file and the field" {
            let dir = CliRunner.tempDir ()
            let t = teacher 81 [ 1f; 1f ]
            let s : Selection =
                { Teacher = TeacherIdentity.ofTeacher "m" t; Policy = Policy.Ar; Layers = 2; K = 1; Kept = [ 1 ]
                  Measured = Some { EvalText = "e"; Window = 8; Windows = 2; TeacherPerplexity = 2.0; Scores = [ score 0 0.1; score 1 0.2 ]; Calibration = None }
                  Seconds = 1.0 }
            let good = LayerSelectionFile.toJson s
            let cases =
                [ "no k", good.Replace("\"k\": 1,", ""), "field 'k' is missing"
                  "k disagrees with the list", good.Replace("\"k\": 1,", "\"k\": 2,"), "lists 1 layers, but k is 2"
                  "not JSON", "{ nope", "not valid JSON"
                  "another format", good.Replace(LayerSelectionFile.formatName, "something else"), "not a layer-selection file" ]
            for name, text, fragment in cases do
                let p = Path.Combine(dir, "bad.json")
                File.WriteAllText(p, text)
                match LayerSelectionFile.read p with
                | Ok _ -> failtest $"{name}: accepted"
                | Error e ->
                    let msg = InputError.describe e
                    Expect.stringContains msg p $"{name}: names the file"
                    Expect.stringContains msg fragment $"{name}: says what is wrong"
        }

        test "a selection for another teacher is refused, naming what differs" {
            let a = teacher 90 [ 1f; 1f; 1f ]
            let ida = TeacherIdentity.ofTeacher "a" a
            Expect.equal (TeacherIdentity.mismatch ida (TeacherIdentity.ofTeacher "elsewhere/a" a)) None "same teacher at another path"
            let nudged =
                let l0 = a.Weights.Layers[0]
                let down = Array.copy l0.Down
                down[7] <- down[7] + 1e-6f
                { a with Weights = { a.Weights with Layers = Array.append [| { l0 with Down = down } |] a.Weights.Layers[1..] } }
            let s : Selection = { Teacher = ida; Policy = Policy.Uniform; Layers = 3; K = 1; Kept = [ 0 ]; Measured = None; Seconds = 0.0 }
            match LayerSelectionFile.keptFor "sel.json" s (TeacherIdentity.ofTeacher "a" nudged) with
            | Ok _ -> failtest "one changed weight must be a different teacher"
            | Error e ->
                let msg = InputError.describe e
                for f in [ "--keep-from"; "sel.json"; "different weights" ] do Expect.stringContains msg f "names the mismatch"
            match LayerSelectionFile.keptFor "sel.json" s (TeacherIdentity.ofTeacher "b" (teacher 90 [ 1f; 1f; 1f; 1f ])) with
            | Ok _ -> failtest "another shape must be refused"
            | Error e -> Expect.stringContains (InputError.describe e) "layers 3 vs 4" "names the differing field"
            Expect.equal (LayerSelectionFile.keptFor "sel.json" s ida) (Ok [ 0 ]) "the right teacher gets the layers"
        }
    ]
