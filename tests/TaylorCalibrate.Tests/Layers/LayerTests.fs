/// Each layer of Layers/ on its own against the double-precision reference (Reference/DecoderReference.fs):
/// the forward to fp32 rounding, and the backward of the functional Σ r ⊙ y against central finite
/// differences of the reference, for every parameter and the input. Attention in three variants (Qwen2
/// biases with half-split RoPE, Qwen3 q/k norms with adjacent RoPE, an o_proj bias), the SwiGLU MLP and the
/// head (RMSNorm + classifier), on every backend.
module TaylorCalibrate.Tests.Layers.LayerTests

open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Layers
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Training
open TaylorCalibrate.Tests
open TaylorCalibrate.Tests.Model.TeacherForwardTests
open TaylorCalibrate.Tests.Reference

let private B, T = 2, 6

let private config family layout outputBias : ModelConfig =
    { TinyModels.config family with Dim = 16; Hidden = 24; Layers = 1; Heads = 4; KvHeads = 2; HeadDim = 4
                                    RopeLayout = layout; OutputBias = outputBias }

/// Checks forward and backward of a layer whose weights are `named` against `reference weights x`.
let private check (be: IBackend) (owner: TensorOwner) (named: (string * Tensor) list) (D: int) (outDim: int)
                  (forward: Tensor -> Tensor -> unit) (backward: Grads -> Tensor -> Tensor -> unit)
                  (reference: Map<string, float[]> -> float[] -> float[]) =
    let x = Rand.normal 21 1.0 (B * T * D)
    let r = Rand.normal 22 1.0 (B * T * outDim)
    let xt = owner.Upload(x, [| B; T; D |])
    let y = owner.Allocate [| B; T; outDim |]
    forward xt y
    let weights = Map [ for n, t in named -> n, t.ToArray() |> Array.map float ]
    let xd = Array.map float x
    let expected = reference weights xd
    // fp32 against f64: ~1e-7 per op through a few dozen ops; 1e-5 of the output's scale.
    let scale = expected |> Array.map abs |> Array.max
    Array.iteri2 (fun i (g: float32) e ->
        if abs (float g - e) > 1e-5 * scale then failtest $"y[{i}] = {g}, reference {e}") (y.ToArray()) expected
    let parameters = [ for n, t in named -> { Name = n; Value = t; Grad = owner.Allocate t.Shape } ]
    let dy = owner.Upload(r, [| B; T; outDim |])
    let dx = owner.Allocate [| B; T; D |]
    backward (Grads parameters) dy dx
    let objective (w: Map<string, float[]>) (x: float[]) = Array.fold2 (fun a yv rv -> a + yv * float rv) 0.0 (reference w x) r
    let h = 1e-5
    // As in the whole-model test: f64 differences are exact to ~1e-10; the fp32 backward is off by ~1e-6 of
    // each tensor's largest entry; 2e-4 catches any wrong term.
    for name, g in [ for q in parameters -> q.Name, q.Grad.ToArray() ] @ [ "x", dx.ToArray() ] do
        let gScale = g |> Array.map (fun v -> abs (float v)) |> Array.max |> max 1e-6
        let idx = if g.Length <= 8 then [ 0 .. g.Length - 1 ] else [ for k in 0 .. 7 -> (k * 7919) % g.Length ]
        for i in idx do
            let at (d: float) =
                if name = "x" then objective weights (Array.mapi (fun j v -> if j = i then v + d else v) xd)
                else objective (weights.Add(name, Array.mapi (fun j v -> if j = i then v + d else v) weights[name])) xd
            let fd = (at h - at -h) / (2.0 * h)
            let err = abs (fd - float g[i]) / gScale
            if err > 2e-4 then failtest $"{name}[{i}]: analytic {g[i]}, finite difference {fd} (relative error {err:E2})"

let private refModel (c: ModelConfig) (w: Map<string, float[]>) : DecoderReference.Model = { Config = c; Gdn = Set.empty; Weights = w }

[<Tests>]
let tests =
    testList "Layers.Layer" [
        for handle in Backends.all do
            for family, layout, ob in [ ModelFamily.Qwen2, RopeLayout.HalfSplit, false
                                        ModelFamily.Qwen3, RopeLayout.Adjacent, false
                                        ModelFamily.Llama, RopeLayout.HalfSplit, true ] do
                yield test $"{handle.Name}: attention forward and backward ({family}, {layout}, o_proj bias {ob})" {
                    let be = handle.Get()
                    let c = config family layout ob
                    use owner = new TensorOwner(be)
                    use scratch = new Scratch(be)
                    use arena = new Arena(be)
                    let p = Attention.upload owner c (TinyModels.weights c 5).Layers[0]
                    let struct (cos, sin) = RopeTables.Build(T, c.HeadDim, c.RopeTheta, null)
                    let cosT, sinT = owner.Upload(cos, [| T; c.HeadDim / 2 |]), owner.Upload(sin, [| T; c.HeadDim / 2 |])
                    let mutable saved = None
                    check be owner (Attention.named p) c.Dim c.Dim
                        (fun x y -> saved <- Some(Attention.forward be scratch arena c p x cosT sinT None y))
                        (fun g dy dx -> Attention.backward be scratch g c p saved.Value dy dx)
                        (fun w x -> DecoderReference.softmaxMixer (refModel c w) "" x B T)
                }
            yield test $"{handle.Name}: SwiGLU MLP forward and backward" {
                let be = handle.Get()
                let c = config ModelFamily.Llama RopeLayout.HalfSplit false
                use owner = new TensorOwner(be)
                use scratch = new Scratch(be)
                use arena = new Arena(be)
                let l = (TinyModels.weights c 6).Layers[0]
                let p =
                    { Gate = Linear.ofWeight (owner.Upload(l.Gate, [| c.Hidden; c.Dim |]))
                      Up = Linear.ofWeight (owner.Upload(l.Up, [| c.Hidden; c.Dim |]))
                      Down = Linear.ofWeight (owner.Upload(l.Down, [| c.Dim; c.Hidden |])) }
                let mutable saved = None
                check be owner [ "gate", p.Gate.W; "up", p.Up.W; "down", p.Down.W ] c.Dim c.Dim
                    (fun x y -> saved <- Some(Mlp.forward be scratch arena p x y))
                    (fun g dy dx -> Mlp.backward be scratch g p saved.Value dy dx)
                    (fun w x ->
                        let gate = DecoderReference.linear x w["gate"] None c.Hidden
                        let up = DecoderReference.linear x w["up"] None c.Hidden
                        DecoderReference.linear (Array.map2 (fun a b -> Elementwise.silu a * b) gate up) w["down"] None c.Dim)
            }
            yield test $"{handle.Name}: final norm and head forward and backward" {
                let be = handle.Get()
                let c = config ModelFamily.Llama RopeLayout.HalfSplit false
                use owner = new TensorOwner(be)
                use scratch = new Scratch(be)
                use arena = new Arena(be)
                let p = { Norm = owner.Upload(Rand.uniform 8 0.7 1.3 c.Dim, [| c.Dim |]); W = owner.Upload(Rand.normal 9 0.3 (c.Vocab * c.Dim), [| c.Vocab; c.Dim |]) }
                let mutable saved = None
                check be owner [ "norm", p.Norm; "head", p.W ] c.Dim c.Vocab
                    (fun x y -> saved <- Some(Head.forward be scratch arena p (float32 c.NormEps) x y))
                    (fun g dy dx -> Head.backward be scratch g p saved.Value dy dx)
                    (fun w x -> DecoderReference.linear (DecoderReference.norm x w["norm"] c.NormEps) w["head"] None c.Vocab)
            }
    ]
