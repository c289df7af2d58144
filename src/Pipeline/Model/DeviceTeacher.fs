/// A teacher's weights uploaded to a backend, plus the RoPE cos/sin tables per sequence length (built on
/// the host by RopeTables, with Llama-3 scaling when configured). Dispose to free the device memory.
namespace TaylorCalibrate.Pipeline.Model

open System
open System.Collections.Generic
open TaylorCalibrate.Backend

/// One layer's tensors on the device; shapes as in LayerWeights.
type DeviceLayer =
    { AttnNorm: Tensor
      Attention: DeviceAttention
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
            { AttnNorm = upload l.AttnNorm [| c.Dim |]
              Attention = SoftmaxAttention.upload upload c l
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
