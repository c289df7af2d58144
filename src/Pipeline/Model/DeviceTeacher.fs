/// A teacher's weights uploaded to a backend, plus the RoPE cos/sin tables per sequence length (built on
/// the host by RopeTables, with Llama-3 scaling when configured). Dispose to free the device memory.
namespace TaylorCalibrate.Pipeline.Model

open System
open System.Collections.Generic
open TaylorCalibrate.Backend

/// One layer's tensors on the device; shapes as in LayerWeights.
type DeviceLayer =
    { AttnNorm: Tensor
      Wq: Tensor
      Wk: Tensor
      Wv: Tensor
      Wo: Tensor
      /// (1, Q), (1, K), (1, K), (1, D): row vectors, added with a rank-1 GEMM.
      Bq: Tensor option
      Bk: Tensor option
      Bv: Tensor option
      Bo: Tensor option
      QNorm: Tensor option
      KNorm: Tensor option
      MlpNorm: Tensor
      Gate: Tensor
      Up: Tensor
      Down: Tensor }

/// The weights of `teacher` on `backend`.
type DeviceTeacher(backend: IBackend, teacher: Teacher) =
    let c = teacher.Config
    let owned = List<Tensor>()
    let upload (data: float32[]) (shape: int[]) =
        let t = backend.FromArray(data, shape)
        owned.Add t
        t
    let w = teacher.Weights
    let embedding = upload w.Embedding [| c.Vocab; c.Dim |]
    let layers =
        w.Layers |> Array.map (fun l ->
            let row (n: int) (a: float32[] option) = a |> Option.map (fun a -> upload a [| 1; n |])
            { AttnNorm = upload l.AttnNorm [| c.Dim |]
              Wq = upload l.Wq [| c.QDim; c.Dim |]
              Wk = upload l.Wk [| c.KvDim; c.Dim |]
              Wv = upload l.Wv [| c.KvDim; c.Dim |]
              Wo = upload l.Wo [| c.Dim; c.QDim |]
              Bq = row c.QDim l.Bq
              Bk = row c.KvDim l.Bk
              Bv = row c.KvDim l.Bv
              Bo = row c.Dim l.Bo
              QNorm = l.QNorm |> Option.map (fun a -> upload a [| c.HeadDim |])
              KNorm = l.KNorm |> Option.map (fun a -> upload a [| c.HeadDim |])
              MlpNorm = upload l.MlpNorm [| c.Dim |]
              Gate = upload l.Gate [| c.Hidden; c.Dim |]
              Up = upload l.Up [| c.Hidden; c.Dim |]
              Down = upload l.Down [| c.Dim; c.Hidden |] })
    let finalNorm = upload w.FinalNorm [| c.Dim |]
    let lmHead = match w.LmHead with Some a -> upload a [| c.Vocab; c.Dim |] | None -> embedding
    let ropeTables = Dictionary<int, Tensor * Tensor>()

    member _.Backend = backend
    member _.Teacher = teacher
    member _.Config = c
    /// (V, D)
    member _.Embedding = embedding
    member _.Layers = layers
    /// (D)
    member _.FinalNorm = finalNorm
    /// (V, D): the embedding when tied.
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
