/// Every path that decides which Phase-2 parameters the user gets (docs/method.md §5.3, §11c): the best
/// state is restored when the loss rises (a layer that already fits, an overshooting learning rate), the
/// state after the last update competes too, and per-layer checkpoints resume a conversion exactly, while a
/// missing, unreadable or incomplete checkpoint makes the layer align again instead of failing.
module TaylorCalibrate.Tests.Stages.AlignRestoreTests

open System
open System.IO
open System.Threading
open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Io
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Pipeline.Stages
open TaylorCalibrate.Tests
open TaylorCalibrate.Tests.Model.TeacherForwardTests

let private D, H, Hd, B, T = 6, 2, 3, 2, 6

let private config : ModelConfig =
    { Family = ModelFamily.Llama; Dim = D; Hidden = 4 * D; Layers = 1; Heads = H; KvHeads = H; HeadDim = Hd; Vocab = 8
      Context = 64; NormEps = 1e-5; RopeTheta = 10000.0; RopeScaling = None; RopeLayout = RopeLayout.Adjacent
      TiedEmbeddings = true; QkvBias = false; OutputBias = false; QkNorm = false }

let private layer seed : GdnWeights =
    let Q = H * Hd
    { Wq = Rand.normal seed 0.5 (Q * D); Wk = Rand.normal (seed + 1) 0.5 (Q * D); Wv = Rand.normal (seed + 2) 0.5 (Q * D)
      Wg = Rand.normal (seed + 3) 0.5 (Q * D); Wa = Rand.normal (seed + 4) 0.5 (H * D); Wb = Rand.normal (seed + 5) 0.5 (H * D)
      ALog = Rand.normal (seed + 6) 0.3 H; DtBias = Rand.normal (seed + 7) 0.5 H; ONorm = Rand.uniform (seed + 8) 0.5 1.5 Hd
      Wo = Rand.normal (seed + 9) 0.5 (D * Q) }

let private trace (target: float32[]) : TeacherTrace.LayerTrace =
    { Layer = 0; X = Rand.normal 77 1.0 (B * T * D); Context = Array.zeroCreate (B * T * H * Hd); Output = target
      MeanDistance = Array.create H 1.0; Entropy = Array.create H 1.0 }

let private align o w tr =
    Align.alignLayer o (Backends.cpu.Get()) config tr B T w (fun _ _ -> ()) CancellationToken.None

let private argmin (a: float[]) = a |> Array.indexed |> Array.minBy snd |> fst

let private equalWeights (a: GdnWeights) (b: GdnWeights) (what: string) =
    for name, x, y in [ "q_proj", a.Wq, b.Wq; "k_proj", a.Wk, b.Wk; "v_proj", a.Wv, b.Wv; "g_proj", a.Wg, b.Wg; "a_proj", a.Wa, b.Wa
                        "b_proj", a.Wb, b.Wb; "A_log", a.ALog, b.ALog; "dt_bias", a.DtBias, b.DtBias; "o_norm", a.ONorm, b.ONorm
                        "o_proj", a.Wo, b.Wo ] do
        Numeric.bitEqual x y $"{what}: {name}"

// ---- a tiny teacher converted with per-layer checkpoints ----------------------------------------------

let private tinyTeacher () = TinyModels.teacher (TinyModels.config ModelFamily.Llama) 61

let private tinyBatch (t: Teacher) : Calibration.CalibrationBatch =
    { Tokens = Rand.ints 62 t.Config.Vocab (2 * 12); B = 2; T = 12; Source = "random"; Documents = 1; EvalSource = None
      OverlappingDocuments = 0 }

/// Converts both layers of the tiny teacher with 4 alignment steps; `resume` supplies persisted layers.
/// Returns the student, the reports, the layers that were aligned and the layers whose steps ran.
let private convert (dir: string) (resume: bool) =
    let be = Backends.cpu.Get()
    let t = tinyTeacher ()
    use dt = new DeviceDecoder(be, t)
    let tr = TeacherTrace.run dt (tinyBatch t) [ 0; 1 ]
    let aligned = Collections.Generic.List<int>()
    let stepped = Collections.Generic.HashSet<int>()
    let hooks : Convert.Hooks =
        { Resume = (fun i -> if resume then AlignCheckpoint.tryLoad dir i else None)
          LayerAligned = (fun i w r -> aligned.Add i; AlignCheckpoint.save dir i w r)
          Step = (fun i _ _ -> stepped.Add i |> ignore)
          LayerStarted = ignore }
    let o = { Convert.ConvertOptions.defaults Convert.InitStrategy.TaylorCalibrate with Align = { Align.AlignOptions.defaults with Steps = 4 } }
    let s, reports = Convert.run be t tr [] o hooks CancellationToken.None
    s, reports, List.ofSeq aligned, stepped |> Seq.sort |> List.ofSeq

let private layerFile (dir: string) (i: int) = Path.Combine(dir, "align", $"layer-{i}.safetensors")

let private withDir (f: string -> unit) =
    let dir = Path.Combine(Path.GetTempPath(), $"tc-align-{Guid.NewGuid():N}")
    try f dir finally try Directory.Delete(dir, true) with _ -> ()

[<Tests>]
let tests =
    testList "Stages.AlignRestore" [
        test "a layer that already fits: the loss rises after step 0, θ₀ is restored bit-exactly with loss 0" {
            let w = layer 1
            let y0 = Align.layerOutput (Backends.cpu.Get()) config (trace (Array.zeroCreate (B * T * D))) B T w
            let tr = trace y0
            // Zero residual, zero gradient: AdamW's first update is 0, but weight decay shrinks θ, so θ₁..θ₅ miss.
            let out, r = align { Align.AlignOptions.defaults with Steps = 5 } w tr
            Expect.equal r.Losses[0] 0.0 "θ₀ reproduces the target exactly"
            Expect.isGreaterThan r.Losses[5] 0.0 "precondition: the loss rose after the updates"
            Expect.equal (r.BestStep, r.BestLoss) (0, 0.0) "best = θ₀"
            equalWeights w out "restored parameters"
            Expect.equal (Align.fit (Backends.cpu.Get()) config tr B T out).Mse 0.0 "the restored layer fits exactly"
        }

        test "an overshooting learning rate: the lowest-loss θ_s itself is restored and reproduces the recorded loss" {
            let w = layer 11
            let tr = trace (Rand.normal 12 1.0 (B * T * D))
            let o = { Align.AlignOptions.defaults with Steps = 8; LrProjections = 0.3f; LrGates = 0.3f }
            let out, r = align o w tr
            Expect.equal r.BestStep (argmin r.Losses) "BestStep is the argmin of the losses"
            Expect.equal r.BestLoss r.Losses[r.BestStep] "BestLoss is its loss"
            Expect.isGreaterThan r.BestStep 0 "precondition: a step helped"
            Expect.isLessThan r.BestStep 8 "precondition: the loss rose again before the end"
            let fit = Align.fit (Backends.cpu.Get()) config tr B T out
            // The alignment's loss is an fp32 sum over 72 elements, fit's a double one: ~1e-7 relative.
            Expect.floatClose { absolute = 0.0; relative = 1e-5 } fit.Mse r.BestLoss "the restored layer has the best loss"
            Expect.isGreaterThan (abs (fit.Mse - r.Losses[r.BestStep + 1]) / r.BestLoss) 1e-3 "and not the loss one step later"
        }

        test "a falling loss: θ after the last update is evaluated and kept" {
            let w = layer 21
            let tr = trace (Rand.normal 22 1.0 (B * T * D))
            let out, r = align { Align.AlignOptions.defaults with Steps = 3; LrProjections = 1e-3f; LrGates = 1e-3f } w tr
            Expect.equal r.Losses.Length 4 "θ₀..θ₃"
            Expect.isTrue (r.Losses |> Array.pairwise |> Array.forall (fun (a, b) -> b < a)) $"precondition: falling losses {r.Losses}"
            Expect.equal r.BestStep 3 "θ₃ (after the last update) is best"
            let fit = Align.fit (Backends.cpu.Get()) config tr B T out
            Expect.floatClose { absolute = 0.0; relative = 1e-5 } fit.Mse r.Losses[3] "the restored layer is θ₃"
        }

        test "checkpoint: save -> tryLoad returns the same weights and curve; absent files give None" {
            withDir (fun dir ->
                let w = layer 31
                let r : Align.AlignResult =
                    { Layer = 4; Losses = [| 1.5; 0.25; 1.0 / 3.0 |]; BestLoss = 0.25; BestStep = 1; GradNorms = [| 2.0; Math.PI |]; Seconds = 0.125 }
                AlignCheckpoint.save dir 4 w r
                match AlignCheckpoint.tryLoad dir 4 with
                | None -> failtest "a saved layer must load"
                | Some(w2, r2) ->
                    equalWeights w w2 "reloaded"
                    Expect.equal r2 r "reloaded result (losses exactly, via round-trip formatting)"
                Expect.isNone (AlignCheckpoint.tryLoad dir 5) "no file for layer 5")
        }

        test "resume: persisted layers are not aligned again and the student is identical" {
            withDir (fun dir ->
                let s1, reports1, aligned1, stepped1 = convert dir false
                Expect.equal aligned1 [ 0; 1 ] "first run aligns both layers"
                Expect.equal stepped1 [ 0; 1 ] "and steps both"
                // Interrupted after layer 0: layer 1's checkpoint is gone.
                File.Delete(layerFile dir 1)
                let s2, reports2, aligned2, stepped2 = convert dir true
                Expect.equal aligned2 [ 1 ] "only layer 1 is aligned again"
                Expect.equal stepped2 [ 1 ] "layer 0 runs no alignment step"
                for i in [ 0; 1 ] do equalWeights s1.Gdn[i] s2.Gdn[i] $"layer {i} after resume"
                Expect.equal reports2[0].Alignment reports1[0].Alignment "layer 0's loss curve comes from its checkpoint")
        }

        test "corrupt checkpoints (garbage, truncated, without q_proj) are aligned again, not trusted" {
            withDir (fun dir ->
                let s1, _, _, _ = convert dir false
                let good = File.ReadAllBytes(layerFile dir 0)
                let corruptions =
                    [ "garbage", (fun () -> File.WriteAllBytes(layerFile dir 0, Text.Encoding.ASCII.GetBytes "not a safetensors file"))
                      "truncated", (fun () -> File.WriteAllBytes(layerFile dir 0, good[.. good.Length / 2]))
                      "without q_proj", (fun () ->
                          let h = Safetensors.readHeader (layerFile dir 0) |> Result.defaultWith (fun _ -> failtest "header")
                          let keep = h.Entries |> List.filter (fun e -> e.Name <> "q_proj")
                          let tensors = keep |> List.map (fun e -> e.Name, e.Shape, Safetensors.F32(Safetensors.readF32 h e.Name |> Result.defaultValue [||]))
                          Safetensors.write (layerFile dir 0) h.Metadata tensors) ]
                for name, corrupt in corruptions do
                    File.WriteAllBytes(layerFile dir 0, good)
                    corrupt ()
                    Expect.isNone (AlignCheckpoint.tryLoad dir 0) $"{name}: not loaded"
                    let s2, _, aligned, _ = convert dir true
                    Expect.equal aligned [ 0 ] $"{name}: layer 0 aligned again, layer 1 resumed"
                    equalWeights s1.Gdn[0] s2.Gdn[0] $"{name}: layer 0 realigned")
        }
    ]
