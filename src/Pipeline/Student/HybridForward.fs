/// The hybrid student on a backend and its forward pass (method.md §2): the teacher's block structure,
/// with each layer's mixer either the teacher's softmax attention (kept layers, computed exactly as
/// Model/Forward.fs does: RoPE, optional q/k norm, biases) or the gdn_v4 layer of GdnLayer.fs.
module TaylorCalibrate.Pipeline.Student.HybridForward

open System
open System.Collections.Generic
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Model

/// A kept layer's softmax attention weights on the device; shapes as in LayerWeights, biases (1, n).
type DeviceAttention =
    { Wq: Tensor
      Wk: Tensor
      Wv: Tensor
      Wo: Tensor
      Bq: Tensor option
      Bk: Tensor option
      Bv: Tensor option
      Bo: Tensor option
      QNorm: Tensor option
      KNorm: Tensor option }

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
            let row (n: int) (a: float32[] option) = a |> Option.map (fun a -> upload a [| 1; n |])
            let mixer =
                match student.Gdn.TryFind i with
                | Some g ->
                    let d = new GdnLayer.DeviceGdn(backend, dims, g)
                    owned.Add d
                    Gdn d
                | None ->
                    Softmax
                        { Wq = upload l.Wq [| c.QDim; c.Dim |]
                          Wk = upload l.Wk [| c.KvDim; c.Dim |]
                          Wv = upload l.Wv [| c.KvDim; c.Dim |]
                          Wo = upload l.Wo [| c.Dim; c.QDim |]
                          Bq = row c.QDim l.Bq
                          Bk = row c.KvDim l.Bk
                          Bv = row c.KvDim l.Bv
                          Bo = row c.Dim l.Bo
                          QNorm = l.QNorm |> Option.map (fun a -> upload a [| c.HeadDim |])
                          KNorm = l.KNorm |> Option.map (fun a -> upload a [| c.HeadDim |]) }
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

let private linear (be: IBackend) (x: Tensor) (w: Tensor) (y: Tensor) (rows: int) =
    be.Gemm(x, w, y, GemmSpec(rows, w.Shape[0], w.Shape[1], TransB = true))

let private addBias (be: IBackend) (ones: Tensor) (b: Tensor) (y: Tensor) (rows: int) =
    be.Gemm(ones, b, y, GemmSpec(rows, b.Shape[1], 1, Beta = 1f))

/// Logits (B, T, V), owned by the caller, for ids (B·T, row-major).
let run (m: DeviceStudent) (ids: int[]) (B: int) (T: int) : Tensor =
    let c = m.Config
    let be = m.Backend
    if B <= 0 || T <= 0 || ids.Length <> B * T then invalidArg "ids" $"{ids.Length} ids do not fill [B={B}, T={T}]"
    if T > c.Context then invalidArg "T" $"sequence length {T} exceeds the model's context {c.Context}"
    for id in ids do
        if id < 0 || id >= c.Vocab then invalidArg "ids" $"token id {id} is outside the vocabulary [0, {c.Vocab})"
    let N = B * T
    let H, Hkv, hd, D, F = c.Heads, c.KvHeads, c.HeadDim, c.Dim, c.Hidden
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
        let q = alloc [| B; T; H; hd |]
        let k = alloc [| B; T; Hkv; hd |]
        let v = alloc [| B; T; Hkv; hd |]
        let o = alloc [| B; T; H; hd |]
        let lse = alloc [| B; H; T |]
        let mixOut = alloc [| B; T; D |]
        let gate = alloc [| B; T; F |]
        let up = alloc [| B; T; F |]
        let act = alloc [| B; T; F |]
        let down = alloc [| B; T; D |]
        let rstdQ = if c.QkNorm then alloc [| N * H |] else null
        let rstdK = if c.QkNorm then alloc [| N * Hkv |] else null
        let qNormed = if c.QkNorm then alloc [| B; T; H; hd |] else q
        let kNormed = if c.QkNorm then alloc [| B; T; Hkv; hd |] else k
        let ones = alloc [| N; 1 |]
        be.Fill(ones, 1f)
        let ws = new GdnLayer.GdnWorkspace(be, m.GdnDims, B, T)
        scratch.Add ws
        be.Embedding(m.Embedding, idsT, x)
        for l in m.Blocks do
            be.RmsNorm(x, l.AttnNorm, xn, rstd, float32 c.NormEps)
            match l.Mixer with
            | Gdn g -> GdnLayer.forward g ws xn mixOut
            | Softmax a ->
                let cos, sin = m.Rope T
                linear be xn a.Wq q N
                linear be xn a.Wk k N
                linear be xn a.Wv v N
                a.Bq |> Option.iter (fun b -> addBias be ones b q N)
                a.Bk |> Option.iter (fun b -> addBias be ones b k N)
                a.Bv |> Option.iter (fun b -> addBias be ones b v N)
                a.QNorm |> Option.iter (fun w -> be.RmsNorm(q, w, qNormed, rstdQ, float32 c.NormEps))
                a.KNorm |> Option.iter (fun w -> be.RmsNorm(k, w, kNormed, rstdK, float32 c.NormEps))
                be.Rope(qNormed, cos, sin, q, c.RopeLayout, false)
                be.Rope(kNormed, cos, sin, k, c.RopeLayout, false)
                be.AttentionForward(q, k, v, o, lse, float32 c.AttentionScale, null, null)
                linear be o a.Wo mixOut N
                a.Bo |> Option.iter (fun b -> addBias be ones b mixOut N)
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
