/// The decoder's training passes (Model/Decoder.fs) on tiny hybrids (2 softmax + 2 gdn_v4 blocks, GQA):
/// the whole-model gradient of the mean cross-entropy (the backend's CrossEntropy op) against central
/// finite differences of the double-precision reference forward (Reference/DecoderReference.fs), for both
/// RoPE pairings, Qwen2 biases, an o_proj bias, Qwen3 q/k norms, tied and untied heads, on every backend;
/// recompute is bit-identical; the stated saved bytes are what is allocated; training lowers the loss.
module TaylorCalibrate.Tests.Layers.DecoderGradientTests

open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Layers
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Tests
open TaylorCalibrate.Tests.Model.TeacherForwardTests
open TaylorCalibrate.Tests.Reference

type private Variant =
    { Name: string
      Family: ModelFamily
      Layout: RopeLayout
      Tied: bool
      OutputBias: bool }

let private variants =
    [ { Name = "llama half-split tied"; Family = ModelFamily.Llama; Layout = RopeLayout.HalfSplit; Tied = true; OutputBias = false }
      { Name = "llama adjacent untied, o_proj bias"; Family = ModelFamily.Llama; Layout = RopeLayout.Adjacent; Tied = false; OutputBias = true }
      { Name = "qwen2 q/k/v biases tied"; Family = ModelFamily.Qwen2; Layout = RopeLayout.HalfSplit; Tied = true; OutputBias = false }
      { Name = "qwen3 q/k norm untied"; Family = ModelFamily.Qwen3; Layout = RopeLayout.HalfSplit; Tied = false; OutputBias = false } ]

/// 4 layers (softmax, gdn, softmax, gdn), D 16, 4 query heads on 2 kv heads of 4, vocabulary 20.
let private config (v: Variant) : ModelConfig =
    { Family = v.Family; Dim = 16; Hidden = 24; Layers = 4; Heads = 4; KvHeads = 2; HeadDim = 4; Vocab = 20
      Context = 16; NormEps = 1e-6; RopeTheta = 10000.0; RopeScaling = None; RopeLayout = v.Layout
      TiedEmbeddings = v.Tied; QkvBias = (v.Family = ModelFamily.Qwen2); OutputBias = v.OutputBias
      QkNorm = (v.Family = ModelFamily.Qwen3) }

let private gdnWeights (c: ModelConfig) (seed: int) : GdnWeights =
    let Q, D, H = c.QDim, c.Dim, c.Heads
    { Wq = Rand.normal seed 0.3 (Q * D); Wk = Rand.normal (seed + 1) 0.3 (Q * D); Wv = Rand.normal (seed + 2) 0.3 (Q * D)
      Wg = Rand.normal (seed + 3) 0.3 (Q * D); Wa = Rand.normal (seed + 4) 0.3 (H * D); Wb = Rand.normal (seed + 5) 0.3 (H * D)
      ALog = Rand.normal (seed + 6) 0.5 H; DtBias = Rand.normal (seed + 7) 0.5 H
      ONorm = Rand.uniform (seed + 8) 0.7 1.3 c.HeadDim; Wo = Rand.normal (seed + 9) 0.3 (D * Q) }

/// Layers 0 and 2 keep softmax attention; 1 and 3 are gdn_v4.
let tinyHybrid (c: ModelConfig) (seed: int) : Student =
    { Config = c; Base = TinyModels.weights c seed; Kept = [ 0; 2 ]
      Gdn = Map [ 1, gdnWeights c (seed + 100); 3, gdnWeights c (seed + 200) ]
      GqaExpand = GqaExpand.Heads; Init = "test" }

let private B, T = 2, 5

let private batch (c: ModelConfig) =
    let ids = Rand.ints 7 c.Vocab (B * T)
    // Target of position t is the next id in the row; the last position of each row predicts nothing.
    let targets = Array.init (B * T) (fun i -> if i % T = T - 1 then -1 else ids[i + 1])
    ids, targets

/// Mean cross-entropy and, through the backward, every parameter's gradient (name → host copy).
let private analytic (be: IBackend) (m: DeviceDecoder) (ids: int[]) (targets: int[]) (recompute: bool) =
    let ps = m.Parameters
    for p in ps do be.Fill(p.Grad, 0f)
    use pass = Decoder.trainForward m ids B T { Recompute = recompute }
    use targetsT = be.FromInts(targets, B * T)
    use loss = be.Allocate [| B * T |]
    let counted = targets |> Array.filter (fun t -> t >= 0) |> Array.length
    be.CrossEntropy(pass.Logits, targetsT, loss, pass.Logits, 1f / float32 counted)
    let mean = (loss.ToArray() |> Array.sumBy float) / float counted
    Decoder.backward m pass pass.Logits (Grads ps)
    mean, [ for p in ps -> p.Name, p.Grad.ToArray() ]

let private referenceModel (m: DeviceDecoder) gdn : DecoderReference.Model =
    { Config = m.Config; Gdn = gdn
      Weights = Map [ for n, t in m.Named -> n, t.ToArray() |> Array.map float ] }

/// Largest |analytic − finite difference| over sampled entries of every parameter, relative to the
/// parameter's largest gradient entry.
let private worstError (r: DecoderReference.Model) (ids: int[]) (targets: int[]) (grads: (string * float32[]) list) =
    let V = r.Config.Vocab
    let f (w: DecoderReference.Model) = DecoderReference.meanCrossEntropy (DecoderReference.forward w ids B T) targets V
    let h = 1e-5
    [ for name, g in grads do
        let scale = g |> Array.map (fun v -> abs (float v)) |> Array.max |> max 1e-6
        let idx = if g.Length <= 6 then [ 0 .. g.Length - 1 ] else [ for k in 0 .. 5 -> (k * 7919) % g.Length ]
        for i in idx do
            let bumped (d: float) =
                let a = Array.copy r.Weights[name]
                a[i] <- a[i] + d
                { r with Weights = r.Weights.Add(name, a) }
            let fd = (f (bumped h) - f (bumped -h)) / (2.0 * h)
            yield name, i, float g[i], fd, abs (fd - float g[i]) / scale ]
    |> List.maxBy (fun (_, _, _, _, e) -> e)

// The finite differences are of the f64 reference (step 1e-5: truncation ~1e-10 and rounding ~1e-11 of the
// loss scale), so the error is the fp32 backward's own: ~1e-7 relative per op (2^-24 times sums of ≤ 24
// terms), grown through 4 blocks, the GDN chunk recurrences and the norms. Measured worst cases are
// 1.6e-6 … 2.0e-5 of each tensor's largest entry (CPU and lavapipe, all four variants); 2e-4 leaves 10x
// room and still catches a wrong or missing term, which is off by O(1).
let private gradTol = 2e-4

[<Tests>]
let tests =
    testList "Layers.Decoder" [
        for handle in Backends.all do
            for v in variants do
              yield
                test $"{handle.Name}: whole-model CE gradient matches f64 finite differences ({v.Name})" {
                    let be = handle.Get()
                    let c = config v
                    use m = new DeviceDecoder(be, tinyHybrid c 3)
                    let ids, targets = batch c
                    let loss, grads = analytic be m ids targets false
                    let r = referenceModel m (set [ 1; 3 ])
                    let refLoss = DecoderReference.meanCrossEntropy (DecoderReference.forward r ids B T) targets c.Vocab
                    // fp32 forward against f64: 1e-5 relative covers the ~1e-6 per-op rounding of 4 blocks.
                    Expect.isLessThan (abs (loss - refLoss) / refLoss) 1e-5 $"loss {loss} vs reference {refLoss}"
                    let name, i, a, fd, err = worstError r ids targets grads
                    Expect.isLessThan err gradTol $"worst: {name}[{i}] analytic {a}, finite difference {fd}, relative error {err:E2}"
                }
        for handle in Backends.all do
          yield test $"{handle.Name}: recompute gives bit-identical gradients" {
                let be = handle.Get()
                let c = config variants[3]
                use m = new DeviceDecoder(be, tinyHybrid c 5)
                let ids, targets = batch c
                let l1, g1 = analytic be m ids targets false
                let l2, g2 = analytic be m ids targets true
                Expect.equal l2 l1 "loss"
                for (n, a), (_, b) in List.zip g1 g2 do Expect.equal b a $"gradient of {n}"
            }
        yield test "training forward logits equal the inference forward's bit for bit" {
            let be = Backends.cpu.Get()
            let c = config variants[2]
            use m = new DeviceDecoder(be, tinyHybrid c 9)
            let ids, _ = batch c
            use pass = Decoder.trainForward m ids B T Decoder.TrainOptions.defaults
            Expect.equal (pass.Logits.ToArray()) (Decoder.logits m ids B T) "logits"
        }
        yield test "stated saved bytes per token are what a training pass holds" {
            let be = Backends.cpu.Get()
            for v in variants do
                let c = config v
                for recompute in [ false; true ] do
                    use m = new DeviceDecoder(be, tinyHybrid c 9)
                    let ids, targets = batch c
                    analytic be m ids targets recompute |> ignore
                    let stated = Decoder.savedBytesPerToken c (set [ 1; 3 ]) recompute
                    Expect.equal m.SavedBytes (stated * int64 (B * T)) $"{v.Name}, recompute {recompute}"
            let c = config variants[0]
            Expect.isLessThan (Decoder.savedBytesPerToken c (set [ 1; 3 ]) true) (Decoder.savedBytesPerToken c (set [ 1; 3 ]) false)
                "recompute holds less"
        }
        yield test "parameter names are the file names of students and Hugging Face teachers" {
            let be = Backends.cpu.Get()
            for v in variants do
                let c = config v
                let s = tinyHybrid c 1
                use m = new DeviceDecoder(be, s)
                let names = m.Parameters |> List.map (fun p -> p.Name)
                Expect.equal names (StudentIo.tensors s |> List.map (fun (n, _, _) -> n)) $"student {v.Name}"
                let t = TinyModels.teacher c 1
                use mt = new DeviceDecoder(be, t)
                Expect.equal (mt.Parameters |> List.map (fun p -> p.Name)) (HfLayout.tensorShapes c |> List.map fst) $"teacher {v.Name}"
        }
        for handle in Backends.all do
          yield test $"{handle.Name}: AdamW on the whole-model gradient lowers the loss on a fixed batch" {
                let be = handle.Get()
                let c = config variants[0]
                use m = new DeviceDecoder(be, tinyHybrid c 4)
                let ids, targets = batch c
                let moments = [ for p in m.Parameters -> be.Allocate p.Value.Shape, be.Allocate p.Value.Shape ]
                try
                    for a, b in moments do
                        be.Fill(a, 0f)
                        be.Fill(b, 0f)
                    let first, _ = analytic be m ids targets false
                    let mutable last = first
                    for step in 1 .. 30 do
                        List.iter2 (fun (p: TaylorCalibrate.Pipeline.Training.Parameter) (mo: Tensor, ve: Tensor) ->
                            be.AdamW(p.Value, p.Grad, mo, ve, AdamWSpec(1e-2f, step, 0f))) m.Parameters moments
                        let l, _ = analytic be m ids targets false
                        last <- l
                    // 30 full-batch steps at lr 1e-2 memorise 8 targets: the loss must at least halve.
                    Expect.isLessThan last (0.5 * first) $"loss {first} → {last}"
                finally
                    for a, b in moments do
                        a.Dispose()
                        b.Dispose()
            }
    ]
