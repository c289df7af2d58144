/// The hybrid student on a backend and its forward pass (method.md §2): the teacher's block structure,
/// with each layer's mixer either the teacher's softmax attention (kept layers: Model/SoftmaxAttention.fs, the
/// teacher forward's own sublayer) or the gdn_v4 layer of GdnLayer.fs.
module TaylorCalibrate.Pipeline.Student.HybridForward

open System
open System.Collections.Generic
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Model

/// The sequence mixer of one layer.
type DeviceMixer =
    | Softmax of DeviceAttention
    | Gdn of GdnLayer.DeviceGdn

/// One block on the device.
type DeviceBlock =
    { AttnNorm: Tensor
      Mixer: DeviceMixer
      MlpNorm: Tensor
      Gate: Tensor
      Up: Tensor
      Down: Tensor }

/// The weights of a student on `backend` (only what the student uses: no attention of converted layers).
type DeviceStudent(backend: IBackend, student: Student) =
    let c = student.Config
    let owned = List<IDisposable>()
    let upload (data: float32[]) (shape: int[]) =
        let t = backend.FromArray(data, shape)
        owned.Add t
        t
    let dims : GdnLayer.GdnDims = { D = c.Dim; H = c.Heads; Hd = c.HeadDim }
    let w = student.Base
    let embedding = upload w.Embedding [| c.Vocab; c.Dim |]
    let blocks =
        w.Layers |> Array.mapi (fun i l ->
            let mixer =
                match student.Gdn.TryFind i with
                | Some g ->
                    let d = new GdnLayer.DeviceGdn(backend, dims, g)
                    owned.Add d
                    Gdn d
                | None -> Softmax(SoftmaxAttention.upload upload c l)
            { AttnNorm = upload l.AttnNorm [| c.Dim |]
              Mixer = mixer
              MlpNorm = upload l.MlpNorm [| c.Dim |]
              Gate = upload l.Gate [| c.Hidden; c.Dim |]
              Up = upload l.Up [| c.Hidden; c.Dim |]
              Down = upload l.Down [| c.Dim; c.Hidden |] })
    let finalNorm = upload w.FinalNorm [| c.Dim |]
    let lmHead = match w.LmHead with Some a -> upload a [| c.Vocab; c.Dim |] | None -> embedding
    let ropeTables = Dictionary<int, Tensor * Tensor>()

    member _.Backend = backend
    member _.Student = student
    member _.Config = c
    member _.GdnDims = dims
    member _.Embedding = embedding
    member _.Blocks = blocks
    member _.FinalNorm = finalNorm
    member _.LmHead = lmHead
    /// cos, sin (T, HeadDim/2) for positions 0..T−1.
    member _.Rope(T: int) =
        match ropeTables.TryGetValue T with
        | true, tables -> tables
        | _ ->
            let struct (cos, sin) = RopeTables.Build(T, c.HeadDim, c.RopeTheta, Option.toObj c.RopeScaling)
            let tables = backend.FromArray(cos, T, c.HeadDim / 2), backend.FromArray(sin, T, c.HeadDim / 2)
            ropeTables[T] <- tables
            tables
    interface IDisposable with
        member _.Dispose() =
            for t in owned do t.Dispose()
            for KeyValue(_, (a, b)) in ropeTables do
                a.Dispose()
                b.Dispose()
            ropeTables.Clear()

let private linear = SoftmaxAttention.linear

/// Logits (B, T, V), owned by the caller, for ids (B·T, row-major).
let run (m: DeviceStudent) (ids: int[]) (B: int) (T: int) : Tensor =
    let c = m.Config
    let be = m.Backend
    if B <= 0 || T <= 0 || ids.Length <> B * T then invalidArg "ids" $"{ids.Length} ids do not fill [B={B}, T={T}]"
    if T > c.Context then invalidArg "T" $"sequence length {T} exceeds the model's context {c.Context}"
    for id in ids do
        if id < 0 || id >= c.Vocab then invalidArg "ids" $"token id {id} is outside the vocabulary [0, {c.Vocab})"
    let N = B * T
    let D, F = c.Dim, c.Hidden
    let scratch = List<IDisposable>()
    let alloc (shape: int[]) =
        let t = be.Allocate shape
        scratch.Add t
        t
    try
        let idsT = be.FromInts(ids, N)
        scratch.Add idsT
        let mutable x = alloc [| B; T; D |]
        let mutable h = alloc [| B; T; D |]
        let xn = alloc [| B; T; D |]
        let rstd = alloc [| N |]
        let mixOut = alloc [| B; T; D |]
        let gate = alloc [| B; T; F |]
        let up = alloc [| B; T; F |]
        let act = alloc [| B; T; F |]
        let down = alloc [| B; T; D |]
        let attn = new AttentionScratch(be, c, B, T)
        scratch.Add attn
        let ws = new GdnLayer.GdnWorkspace(be, m.GdnDims, B, T)
        scratch.Add ws
        be.Embedding(m.Embedding, idsT, x)
        for l in m.Blocks do
            be.RmsNorm(x, l.AttnNorm, xn, rstd, float32 c.NormEps)
            match l.Mixer with
            | Gdn g -> GdnLayer.forward g ws xn mixOut
            | Softmax a ->
                let cos, sin = m.Rope T
                SoftmaxAttention.forward be c a attn xn cos sin None mixOut
            be.Add(x, mixOut, h)
            let t = x
            x <- h
            h <- t
            be.RmsNorm(x, l.MlpNorm, xn, rstd, float32 c.NormEps)
            linear be xn l.Gate gate N
            linear be xn l.Up up N
            be.SwiGlu(gate, up, act)
            linear be act l.Down down N
            be.Add(x, down, h)
            let t = x
            x <- h
            h <- t
        be.RmsNorm(x, m.FinalNorm, xn, rstd, float32 c.NormEps)
        let logits = be.Allocate [| B; T; c.Vocab |]
        try linear be xn m.LmHead logits N
        with _ ->
            logits.Dispose()
            reraise ()
        logits
    finally
        for t in scratch do t.Dispose()

/// Logits (B·T·V, host).
let logits (m: DeviceStudent) (ids: int[]) (B: int) (T: int) : float32[] =
    use l = run m ids B T
    l.ToArray()
