/// Training steps (Training/Trainer.fs) on every backend: gradient accumulation over micro-batches equals the
/// full batch, training lowers the loss, and the optimizer configured with Phase-2's groups and clip
/// reproduces Align.alignLayer's parameters, losses and gradient norms bit for bit.
module TaylorCalibrate.Tests.Training.TrainerTests

open System
open System.Threading
open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Layers
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Pipeline.Stages
open TaylorCalibrate.Pipeline.Training
open TaylorCalibrate.Pipeline.Training.ParameterGroups
open TaylorCalibrate.Tests
open TaylorCalibrate.Tests.Training.ToyModel

let private dims = { In = 6; Out = 3 }

let private toyRules =
    [ { Group = "weight"; Pattern = EndsWith "weight"; Treatment = Train { LearningRate = 1e-2f; WeightDecay = 0.01f } }
      { Group = "bias"; Pattern = EndsWith "bias"; Treatment = Train { LearningRate = 3e-2f; WeightDecay = 0f } } ]

let private sameBits (a: float32[]) (b: float32[]) (what: string) =
    Expect.equal (Array.map BitConverter.SingleToInt32Bits a) (Array.map BitConverter.SingleToInt32Bits b) what

/// (B, T, D) a random GDN layer, its input and a target, as Phase 2 sees them.
let private gdnDims : GdnDims = { D = 8; H = 2; Hd = 4 }

let private gdnConfig : ModelConfig =
    { Family = ModelFamily.Llama; Dim = gdnDims.D; Hidden = 16; Layers = 1; Heads = gdnDims.H; KvHeads = gdnDims.H
      HeadDim = gdnDims.Hd; Vocab = 16; Context = 64; NormEps = 1e-5; RopeTheta = 10000.0; RopeScaling = None
      RopeLayout = RopeLayout.HalfSplit; TiedEmbeddings = false; QkvBias = false; OutputBias = false; QkNorm = false }

let private gdnWeights () : GdnWeights =
    let Q, D, H = gdnDims.Q, gdnDims.D, gdnDims.H
    { Wq = Rand.normal 31 0.3 (Q * D); Wk = Rand.normal 32 0.3 (Q * D); Wv = Rand.normal 33 0.3 (Q * D)
      Wg = Rand.normal 34 0.3 (Q * D); Wa = Rand.normal 35 0.3 (H * D); Wb = Rand.normal 36 0.3 (H * D)
      ALog = Rand.uniform 37 -1.0 1.0 H; DtBias = Rand.uniform 38 -3.0 -1.0 H
      ONorm = Rand.uniform 39 0.8 1.2 gdnDims.Hd; Wo = Rand.normal 40 0.3 (D * Q) }

/// Phase 2's loop written on Trainer.step: Align's loss (mean squared error after o_proj, ∂/∂y = 2(y − Y)/n)
/// and backward, with the parameters named as the student files name them.
let private alignWithTrainer (be: IBackend) (o: Align.AlignOptions) (trace: TeacherTrace.LayerTrace) B T (w: GdnWeights) =
    use owner = new TensorOwner(be)
    use scratch = new Scratch(be)
    use arena = new Arena(be)
    let x = owner.Upload(trace.X, [| B; T; gdnDims.D |])
    let target = owner.Upload(trace.Output, [| B; T; gdnDims.D |])
    let y = owner.Allocate [| B; T; gdnDims.D |]
    let dy = owner.Allocate [| B; T; gdnDims.D |]
    let scalar = owner.Allocate [| 1 |]
    let p = Gdn.upload owner gdnDims w
    let name n = "model.layers.0.attn." + n
    let parameters : Parameter list =
        [ for n, t in [ "q_proj.weight", p.Wq; "k_proj.weight", p.Wk; "v_proj.weight", p.Wv; "g_proj.weight", p.Wg
                        "a_proj.weight", p.Wa; "b_proj.weight", p.Wb; "A_log", p.ALog; "dt_bias", p.DtBias
                        "o_norm.weight", p.ONorm; "o_proj.weight", p.Wo ] ->
            { Name = name n; Value = t; Grad = owner.Allocate t.Shape } ]
    let settings =
        { Beta1 = o.Beta1; Beta2 = o.Beta2; Epsilon = o.Epsilon; ClipNorm = Some o.ClipNorm; Schedule = Schedule.Constant }
    use opt = new AdamW(settings, Presets.phase2 o.LrProjections o.LrGates o.WeightDecay, parameters)
    // o_proj and o_norm are frozen: the backward computes gradients of the trained tensors only.
    let grads = Grads(opt.Trained |> List.map (fun t -> t.Parameter))
    let n = float32 (B * T * gdnDims.D)
    let reports =
        [ for _ in 1 .. o.Steps ->
            Trainer.step opt 1 (fun mb ->
                arena.Reset()
                let saved = Gdn.forward be scratch arena p x y
                be.Copy(y, 0L, dy, 0L, y.Count)
                be.Axpy(-1f, target, dy)
                be.Reduce(ReduceOp.SumOfSquares, dy, scalar)
                let loss = float (scalar.ToArray()[0]) / float n
                be.Scale(dy, 2f / n * mb.Weight, dy)
                Gdn.backward be scratch grads p saved dy None
                loss) ]
    Gdn.download p, reports

[<Tests>]
let tests =
    testList "Training.Trainer" [
        for handle in Backends.all do
            test $"{handle.Name}: 2 micro-batches of B/2 give the full batch's gradient and update" {
                let be = handle.Get()
                let B = 16
                let x, y = dataset dims B 50
                use whole = create be dims 7
                use halves = create be dims 7
                use optWhole = new AdamW(AdamWSettings.defaults, toyRules, whole.Parameters)
                use optHalves = new AdamW(AdamWSettings.defaults, toyRules, halves.Parameters)
                for s in 1 .. 3 do
                    let rw = Trainer.step optWhole 1 (fun mb -> lossAndGrad be whole x y mb.Weight)
                    let rh =
                        Trainer.step optHalves 2 (fun mb ->
                            let start = mb.Index * B / 2
                            lossAndGrad be halves (rows x dims.In start (B / 2)) (rows y dims.Out start (B / 2)) mb.Weight)
                    // The gradients are sums of B products in fp32 in a different grouping (two sums of 8 then
                    // a weighted add, versus one sum of 16): each differs from the exact value by a few 2^-24
                    // relative, so 1e-6 relative is ample and a missing 1/2 weight (error 1) cannot pass.
                    for pw, ph in List.zip whole.Parameters halves.Parameters do
                        Numeric.close 1e-6 0.0 (pw.Grad.ToArray() |> Array.map float) (ph.Grad.ToArray()) $"step {s}: gradient of '{pw.Name}'"
                    Expect.floatClose { absolute = 0.0; relative = 1e-6 } rh.Loss rw.Loss $"step {s}: loss"
                    Expect.floatClose { absolute = 0.0; relative = 1e-5 } rh.GradNorm rw.GradNorm $"step {s}: gradient norm"
                // The updates then differ by AdamW's response to a 1e-6-relative gradient change: m̂/√v̂ moves by
                // about that relative amount, so |Δθ| ≤ 1e-6·lr per step, plus one rounding of θ per step
                // (|θ| < 4 here, where an ulp is 4.8e-7).
                for pw, ph in List.zip whole.Parameters halves.Parameters do
                    Numeric.close 0.0 (3.0 * (3e-2 * 1e-6 + 4.8e-7)) (pw.Value.ToArray() |> Array.map float) (ph.Value.ToArray())
                        $"'{pw.Name}' after 3 steps"
            }

            test $"{handle.Name}: training lowers the loss on a fixed batch" {
                let be = handle.Get()
                let x, y = dataset dims 32 60
                use toy = create be dims 8
                // W* has unit entries, so 40 AdamW steps of ≤ 0.1 can reach it; the noise floor is 0.01.
                use opt = new AdamW({ AdamWSettings.defaults with Schedule = Schedule.WarmupCosine(5, 40) }, Presets.single 0.1f 0f, toy.Parameters)
                let losses = [ for _ in 1 .. 40 -> (Trainer.step opt 2 (fun mb ->
                                   lossAndGrad be toy (rows x dims.In (mb.Index * 16) 16) (rows y dims.Out (mb.Index * 16) 16) mb.Weight)).Loss ]
                Expect.isLessThan losses[39] (0.1 * losses[0]) $"loss {losses[0]} -> {losses[39]}"
            }

            test $"{handle.Name}: Phase-2 groups and clip reproduce Align.alignLayer bit for bit" {
                let be = handle.Get()
                let B, T = 2, 12
                let n = B * T * gdnDims.D
                let trace : TeacherTrace.LayerTrace =
                    { Layer = 0; X = Rand.normal 41 1.0 n; Context = [||]; Output = Rand.normal 42 0.5 n
                      MeanDistance = [||]; Entropy = [||] }
                let o = { Align.AlignOptions.defaults with Steps = 5 }
                let w = gdnWeights ()
                let aligned, result = Align.alignLayer o be gdnConfig trace B T w (fun _ _ -> ()) CancellationToken.None
                // Align returns its lowest-loss parameters; when every step lowers the loss that is θ after the
                // last update, which is what the trainer leaves. Check the premise before comparing.
                Expect.equal result.BestStep o.Steps $"the loss fell at every step: {result.Losses}"
                let trained, reports = alignWithTrainer be o trace B T w
                Expect.equal (reports |> List.map (fun r -> r.Loss)) (List.ofArray result.Losses[.. o.Steps - 1]) "losses before each update"
                Expect.equal (reports |> List.map (fun r -> r.GradNorm)) (List.ofArray result.GradNorms) "gradient norms"
                for name, a, b in
                    [ "q_proj", aligned.Wq, trained.Wq; "k_proj", aligned.Wk, trained.Wk; "v_proj", aligned.Wv, trained.Wv
                      "g_proj", aligned.Wg, trained.Wg; "a_proj", aligned.Wa, trained.Wa; "b_proj", aligned.Wb, trained.Wb
                      "A_log", aligned.ALog, trained.ALog; "dt_bias", aligned.DtBias, trained.DtBias
                      "o_norm", aligned.ONorm, trained.ONorm; "o_proj", aligned.Wo, trained.Wo ] do
                    sameBits b a $"{be.Name}: {name}"
                Expect.notEqual trained.Wq w.Wq "the projections did train"
                Expect.equal trained.Wo w.Wo "o_proj stayed frozen"
            }
    ]
