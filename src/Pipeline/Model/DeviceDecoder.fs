/// A decoder on a backend: the weights of a teacher (every block softmax attention) or of a hybrid
/// student (some blocks gdn_v4), uploaded once, named, and with the buffers its training passes reuse.
/// The passes themselves are in Decoder.fs; the layers in Layers/. docs/training.md describes both.
namespace TaylorCalibrate.Pipeline.Model

open System
open System.Collections.Generic
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Layers
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Pipeline.Training

/// The sequence mixer of one block.
type Mixer =
    | Softmax of AttentionParams
    | Gdn of GdnParams

/// One pre-norm block: x + Mixer(RMSNorm(x)), then + MLP(RMSNorm(·)).
type Block =
    { /// (D)
      AttnNorm: Tensor
      Mixer: Mixer
      /// (D)
      MlpNorm: Tensor
      Mlp: MlpParams }

/// How the model's files name tensors: a Hugging Face teacher (HfLayout) or a student directory (StudentIo).
[<RequireQualifiedAccess>]
type NameStyle =
    | HuggingFace
    | Student

module NameStyle =
    /// The file name of a tensor given in the student spelling (the canonical one here).
    let apply (style: NameStyle) (studentName: string) =
        match style with
        | NameStyle.Student -> studentName
        | NameStyle.HuggingFace ->
            studentName
                .Replace("model.embeddings.weight", "model.embed_tokens.weight")
                .Replace(".attn_norm.weight", ".input_layernorm.weight")
                .Replace(".mlp_norm.weight", ".post_attention_layernorm.weight")
                .Replace(".attn.", ".self_attn.")

/// The weights on `backend`: `w` for embeddings, norms, MLPs, head and the softmax blocks; `gdn` for the
/// blocks it lists (whose attention tensors in `w` are ignored). Dispose to free the device memory.
type DeviceDecoder(backend: IBackend, config: ModelConfig, w: TeacherWeights, gdn: Map<int, GdnWeights>, style: NameStyle) =
    let c = config
    let owner = new TensorOwner(backend)
    let up (a: float32[]) (shape: int[]) = owner.Upload(a, shape)
    let embedding = up w.Embedding [| c.Vocab; c.Dim |]
    let blocks =
        w.Layers |> Array.mapi (fun i l ->
            let mixer =
                match gdn.TryFind i with
                | Some g -> Gdn(Gdn.upload owner (Gdn.dimsOf c) g)
                | None -> Softmax(Attention.upload owner c l)
            { AttnNorm = up l.AttnNorm [| c.Dim |]
              Mixer = mixer
              MlpNorm = up l.MlpNorm [| c.Dim |]
              Mlp =
                { Gate = Linear.ofWeight (up l.Gate [| c.Hidden; c.Dim |])
                  Up = Linear.ofWeight (up l.Up [| c.Hidden; c.Dim |])
                  Down = Linear.ofWeight (up l.Down [| c.Dim; c.Hidden |]) } })
    let head =
        { Norm = up w.FinalNorm [| c.Dim |]
          W = (match w.LmHead with Some a -> up a [| c.Vocab; c.Dim |] | None -> embedding) }
    let ropeTables = Dictionary<int, Tensor * Tensor>()
    let named =
        [ yield "model.embeddings.weight", embedding
          for i, b in Array.indexed blocks do
              let p = $"model.layers.{i}."
              yield p + "attn_norm.weight", b.AttnNorm
              let mixer = match b.Mixer with Softmax a -> Attention.named a | Gdn g -> Gdn.named g
              for n, t in mixer do yield p + "attn." + n, t
              yield p + "mlp_norm.weight", b.MlpNorm
              yield p + "mlp.gate_proj.weight", b.Mlp.Gate.W
              yield p + "mlp.up_proj.weight", b.Mlp.Up.W
              yield p + "mlp.down_proj.weight", b.Mlp.Down.W
          yield "model.norm.weight", head.Norm
          if w.LmHead.IsSome then yield "lm_head.weight", head.W ]
        |> List.map (fun (n, t) -> NameStyle.apply style n, t)
    let gradOwner = lazy (new TensorOwner(backend))
    let parameters =
        lazy (named |> List.map (fun (n, t) -> { Name = n; Value = t; Grad = gradOwner.Value.Allocate t.Shape }))
    let trainScratch = lazy (new Scratch(backend))
    let savedArena = lazy (new Arena(backend))
    let softmaxArena = lazy (new Arena(backend))
    let gdnArena = lazy (new Arena(backend))
    let mutable generation = 0

    /// A teacher: every block softmax attention, Hugging Face names.
    new(backend: IBackend, t: Teacher) = new DeviceDecoder(backend, t.Config, t.Weights, Map.empty, NameStyle.HuggingFace)
    /// A hybrid student: GDN in its converted layers, student-directory names.
    new(backend: IBackend, s: Student) = new DeviceDecoder(backend, s.Config, s.Base, s.Gdn, NameStyle.Student)

    member _.Backend = backend
    member _.Config = c
    /// (V, D)
    member _.Embedding = embedding
    member _.Blocks = blocks
    /// Final norm and classifier (the embedding when tied).
    member _.Head = head
    member _.NameStyle = style
    /// Every distinct weight tensor under its file name, in file order (a tied head appears once, as the
    /// embedding).
    member _.Named = named
    /// Every weight as a trainable Parameter (gradients allocated, zeroed, on first use).
    member _.Parameters : Parameter list = parameters.Value
    /// cos, sin (T, HeadDim/2) for positions 0..T−1 (RopeTables, with Llama-3 scaling when configured).
    member _.Rope(T: int) =
        match ropeTables.TryGetValue T with
        | true, tables -> tables
        | _ ->
            let struct (cos, sin) = RopeTables.Build(T, c.HeadDim, c.RopeTheta, Option.toObj c.RopeScaling)
            let tables = backend.FromArray(cos, T, c.HeadDim / 2), backend.FromArray(sin, T, c.HeadDim / 2)
            ropeTables[T] <- tables
            tables
    /// Temporaries of the training passes, kept between steps.
    member _.TrainScratch = trainScratch.Value
    /// Saved activations of the current training pass (everything, or the block inputs under recompute).
    member _.SavedArena = savedArena.Value
    /// The one block's saved activations under recompute, one arena per mixer kind (so a hybrid holds one
    /// block of each kind, not the union of their shapes).
    member _.BlockArena(mixer: Mixer) = match mixer with Softmax _ -> softmaxArena.Value | Gdn _ -> gdnArena.Value
    /// Counts training forwards, so a backward can refuse a pass whose saved state was overwritten.
    member _.TrainGeneration
        with get () = generation
        and set v = generation <- v
    /// Bytes of saved activations now held (all arenas).
    member _.SavedBytes =
        [ savedArena; softmaxArena; gdnArena ] |> List.sumBy (fun a -> if a.IsValueCreated then a.Value.Bytes else 0L)
    member _.ScratchBytes = if trainScratch.IsValueCreated then trainScratch.Value.Bytes else 0L

    /// Downloads the weights: the teacher layout (attention of GDN blocks left empty) and the GDN layers.
    member _.Download() : TeacherWeights * Map<int, GdnWeights> =
        let get (t: Tensor) = t.ToArray()
        let empty = [||]
        let layers =
            blocks |> Array.map (fun b ->
                let att =
                    match b.Mixer with
                    | Softmax a ->
                        {| Wq = get a.Q.W; Wk = get a.K.W; Wv = get a.V.W; Wo = get a.O.W
                           Bq = a.Q.Bias |> Option.map get; Bk = a.K.Bias |> Option.map get
                           Bv = a.V.Bias |> Option.map get; Bo = a.O.Bias |> Option.map get
                           QNorm = a.QNorm |> Option.map get; KNorm = a.KNorm |> Option.map get |}
                    | Gdn _ ->
                        {| Wq = empty; Wk = empty; Wv = empty; Wo = empty; Bq = None; Bk = None; Bv = None; Bo = None
                           QNorm = None; KNorm = None |}
                { AttnNorm = get b.AttnNorm; Wq = att.Wq; Wk = att.Wk; Wv = att.Wv; Wo = att.Wo
                  Bq = att.Bq; Bk = att.Bk; Bv = att.Bv; Bo = att.Bo; QNorm = att.QNorm; KNorm = att.KNorm
                  MlpNorm = get b.MlpNorm; Gate = get b.Mlp.Gate.W; Up = get b.Mlp.Up.W; Down = get b.Mlp.Down.W })
        let gdnWeights =
            blocks |> Array.indexed |> Array.choose (fun (i, b) ->
                match b.Mixer with Gdn g -> Some(i, Gdn.download g) | Softmax _ -> None)
            |> Map.ofArray
        { Embedding = get embedding; Layers = layers; FinalNorm = get head.Norm
          LmHead = w.LmHead |> Option.map (fun _ -> get head.W) },
        gdnWeights

    interface IDisposable with
        member _.Dispose() =
            (owner :> IDisposable).Dispose()
            if gradOwner.IsValueCreated then (gradOwner.Value :> IDisposable).Dispose()
            if trainScratch.IsValueCreated then (trainScratch.Value :> IDisposable).Dispose()
            if savedArena.IsValueCreated then (savedArena.Value :> IDisposable).Dispose()
            if softmaxArena.IsValueCreated then (softmaxArena.Value :> IDisposable).Dispose()
            if gdnArena.IsValueCreated then (gdnArena.Value :> IDisposable).Dispose()
            for KeyValue(_, (a, b)) in ropeTables do
                a.Dispose()
                b.Dispose()
            ropeTables.Clear()
