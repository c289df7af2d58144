/// The gdn_v4 layer's explicit backward (Layers/Gdn.fs) against central finite differences of its
/// forward, on a tiny layer (D 6, H 2, hd 3, T 7 < one chunk and T 70 > one chunk). The backend is fp32, so
/// differences use a step of 3e-4 (the output RMSNorm of small read-outs is strongly curved: a step of 1e-2
/// is off by 3x on some entries) on the loss Σ r ⊙ y, with error measured relative to the tensor's largest gradient.
module TaylorCalibrate.Tests.Layers.GdnLayerTests

open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Layers
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Pipeline.Training
open TaylorCalibrate.Tests

let private dims : GdnDims = { D = 6; H = 2; Hd = 3 }

let private weights seed : GdnWeights =
    let Q, D, H = dims.Q, dims.D, dims.H
    { Wq = Rand.normal seed 0.5 (Q * D); Wk = Rand.normal (seed + 1) 0.5 (Q * D); Wv = Rand.normal (seed + 2) 0.5 (Q * D)
      Wg = Rand.normal (seed + 3) 0.5 (Q * D); Wa = Rand.normal (seed + 4) 0.5 (H * D); Wb = Rand.normal (seed + 5) 0.5 (H * D)
      ALog = Rand.normal (seed + 6) 0.5 H; DtBias = Rand.normal (seed + 7) 0.5 H
      ONorm = Rand.uniform (seed + 8) 0.5 1.5 dims.Hd; Wo = Rand.normal (seed + 9) 0.5 (D * Q) }

/// Σ r ⊙ GDN(x) in double.
let private objective (be: IBackend) (w: GdnWeights) (x: float32[]) (r: float32[]) T =
    use owner = new TensorOwner(be)
    use scratch = new Scratch(be)
    use arena = new Arena(be)
    let xt = owner.Upload(x, [| 1; T; dims.D |])
    let y = owner.Allocate [| 1; T; dims.D |]
    Gdn.forward be scratch arena (Gdn.upload owner dims w) xt y |> ignore
    Array.fold2 (fun acc a b -> acc + float a * float b) 0.0 (y.ToArray()) r

let private analytic (be: IBackend) (w: GdnWeights) (x: float32[]) (r: float32[]) T =
    use owner = new TensorOwner(be)
    use scratch = new Scratch(be)
    use arena = new Arena(be)
    let xt = owner.Upload(x, [| 1; T; dims.D |])
    let y = owner.Allocate [| 1; T; dims.D |]
    let dy = owner.Upload(r, [| 1; T; dims.D |])
    let dx = owner.Allocate [| 1; T; dims.D |]
    let p = Gdn.upload owner dims w
    // Everything but o_proj trained (Phase 2 freezes it; the whole-model tests train it).
    let trained = Gdn.named p |> List.filter (fun (n, _) -> n <> "o_proj.weight")
    let parameters = trained |> List.map (fun (n, t) -> { Name = n; Value = t; Grad = owner.Allocate t.Shape })
    let saved = Gdn.forward be scratch arena p xt y
    Gdn.backward be scratch (Grads parameters) p saved dy (Some dx)
    let short (n: string) = n.Replace(".weight", "")
    [ for q in parameters -> short q.Name, q.Grad.ToArray() ] @ [ "x", dx.ToArray() ]

let private perturb (w: GdnWeights) (x: float32[]) (name: string) (i: int) (delta: float32) =
    let bump (a: float32[]) = let c = Array.copy a in c[i] <- c[i] + delta; c
    match name with
    | "q_proj" -> { w with Wq = bump w.Wq }, x
    | "k_proj" -> { w with Wk = bump w.Wk }, x
    | "v_proj" -> { w with Wv = bump w.Wv }, x
    | "g_proj" -> { w with Wg = bump w.Wg }, x
    | "a_proj" -> { w with Wa = bump w.Wa }, x
    | "b_proj" -> { w with Wb = bump w.Wb }, x
    | "A_log" -> { w with ALog = bump w.ALog }, x
    | "dt_bias" -> { w with DtBias = bump w.DtBias }, x
    | "o_norm" -> { w with ONorm = bump w.ONorm }, x
    | _ -> w, bump x

[<Tests>]
let tests =
    testList "Layers.GdnLayer" [
        for T in [ 7; 70 ] ->
            test $"backward matches central finite differences (T={T})" {
                let be = Backends.cpu.Get()
                let w = weights 11
                let x = Rand.normal 3 1.0 (T * dims.D)
                let r = Rand.normal 4 1.0 (T * dims.D)
                let h = 3e-4f
                for name, grad in analytic be w x r T do
                    // Every element for small tensors, a spread sample for large ones.
                    let idx = if grad.Length <= 12 then [ 0 .. grad.Length - 1 ] else [ for k in 0 .. 11 -> k * grad.Length / 12 ]
                    let scale = grad |> Array.map (fun v -> abs (float v)) |> Array.max |> max 1e-3
                    for i in idx do
                        let wp, xp = perturb w x name i h
                        let wm, xm = perturb w x name i (-h)
                        let fd = (objective be wp xp r T - objective be wm xm r T) / (2.0 * float h)
                        let err = abs (fd - float grad[i]) / scale
                        Expect.isLessThan err 1e-2 $"{name}[{i}]: analytic {grad[i]}, finite difference {fd}"
            }
    ]
