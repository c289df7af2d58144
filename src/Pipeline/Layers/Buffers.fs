/// Where the layers' tensors live (docs/training.md, "Activation memory"). Three owners with three
/// lifetimes, so that a backward never reads a buffer some other layer has overwritten:
///   - TensorOwner: weights and anything else kept until disposed;
///   - Arena: saved activations (the Saved records of the forward passes), pooled by shape and handed out
///     again after Reset, so one training step after another reuses the same memory;
///   - Scratch: temporaries, one buffer per key, that are dead once the layer call returns.
/// Grads maps a parameter's value tensor to its gradient; a tensor without an entry is frozen and its
/// weight gradient is not computed.
namespace TaylorCalibrate.Pipeline.Layers

open System
open System.Collections.Generic
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Training

/// Tensors kept until this owner is disposed (weights, tables).
type TensorOwner(be: IBackend) =
    let owned = List<Tensor>()
    member _.Backend = be
    /// An uploaded copy of `data` with `shape`.
    member _.Upload(data: float32[], shape: int[]) =
        let t = be.FromArray(data, shape)
        owned.Add t
        t
    /// A zero-filled tensor.
    member _.Allocate(shape: int[]) =
        let t = be.Allocate shape
        be.Fill(t, 0f)
        owned.Add t
        t
    /// Bytes held (fp32).
    member _.Bytes = owned |> Seq.sumBy (fun t -> 4L * t.Count)
    interface IDisposable with
        member _.Dispose() =
            for t in owned do t.Dispose()
            owned.Clear()

/// Saved activations. Alloc hands out tensors by shape; Reset makes every tensor available again (in the
/// same order), so a forward pass that allocates the same shapes in the same order reuses them.
type Arena(be: IBackend) =
    let pools = Dictionary<string, List<Tensor>>()
    let used = Dictionary<string, int>()
    member _.Alloc(shape: int[]) : Tensor =
        let key = String.Join(",", shape)
        let pool =
            match pools.TryGetValue key with
            | true, p -> p
            | _ ->
                let p = List<Tensor>()
                pools[key] <- p
                p
        let n = match used.TryGetValue key with | true, n -> n | _ -> 0
        used[key] <- n + 1
        if n < pool.Count then pool[n]
        else
            let t = be.Allocate shape
            pool.Add t
            t
    /// Every tensor becomes available again; their contents are stale.
    member _.Reset() = used.Clear()
    /// Bytes held (fp32), in use or not.
    member _.Bytes = pools.Values |> Seq.sumBy (fun p -> p |> Seq.sumBy (fun t -> 4L * t.Count))
    interface IDisposable with
        member _.Dispose() =
            for p in pools.Values do
                for t in p do t.Dispose()
            pools.Clear()
            used.Clear()

/// Temporaries: one tensor per key, reallocated when the shape changes. A layer prefixes its keys with its
/// kind ("attn.", "gdn.", "mlp.", ...) so nested calls never share a buffer.
type Scratch(be: IBackend) =
    let buffers = Dictionary<string, Tensor>()
    member _.Get(key: string, shape: int[]) : Tensor =
        match buffers.TryGetValue key with
        | true, t when t.Shape = shape -> t
        | found, old ->
            if found then old.Dispose()
            let t = be.Allocate shape
            buffers[key] <- t
            t
    /// (rows, 1) of ones: biases broadcast over rows and column sums as rank-1 GEMMs.
    member s.Ones(rows: int) : Tensor =
        let key = $"ones.{rows}"
        match buffers.TryGetValue key with
        | true, t -> t
        | _ ->
            let t = s.Get(key, [| rows; 1 |])
            be.Fill(t, 1f)
            t
    /// Bytes held (fp32).
    member _.Bytes = buffers.Values |> Seq.sumBy (fun t -> 4L * t.Count)
    interface IDisposable with
        member _.Dispose() =
            for t in buffers.Values do t.Dispose()
            buffers.Clear()

/// The gradient of each trainable tensor, found by the value tensor's identity.
type Grads(parameters: Parameter seq) =
    let map = Dictionary<Tensor, Tensor>(HashIdentity.Reference)
    do for p in parameters do map[p.Value] <- p.Grad
    /// The gradient of `value`, or None when it is frozen.
    member _.Of(value: Tensor) : Tensor option =
        match map.TryGetValue value with
        | true, g -> Some g
        | _ -> None
    /// Nothing is trained: backward passes compute input gradients only.
    static member Frozen = Grads(Seq.empty)

module Shapes =
    /// `t`'s shape with the last dimension replaced by n.
    let withLast (t: Tensor) (n: int) = Array.append t.Shape[.. t.Shape.Length - 2] [| n |]
