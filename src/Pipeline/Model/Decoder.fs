/// The forward and backward passes of a decoder (DeviceDecoder.fs), batched over [B, T] token ids (no
/// padding; every row causal from position 0). Maths (docs/method.md §2; docs/training.md):
///   x₀ = E[ids];  per block: h = x + Mixer(RMSNorm_attn(x));  x' = h + MLP(RMSNorm_mlp(h));
///   logits = W_head · RMSNorm_final(x_L).
/// The mixer is softmax attention (Layers/Attention.fs) or gdn_v4 (Layers/Gdn.fs). Three passes share one
/// block function, so they compute the same numbers op for op:
///   - `forward`: inference, optionally recording per-layer traces (docs/method.md §5.1) or removing attention
///     sublayers (zero-gate checks, layer selection);
///   - `trainForward`: records what the backward needs (or only the block inputs, under recompute);
///   - `backward`: reverse order, accumulating parameter gradients from dlogits.
module TaylorCalibrate.Pipeline.Model.Decoder

open System
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Layers

/// What an inference forward records besides the logits.
type ForwardOptions =
    { /// Layers whose trace is recorded (softmax blocks only).
      Trace: Set<int>
      /// Layers whose attention sublayer is removed (its output taken as 0; the residual is kept).
      SkipAttention: Set<int> }

module ForwardOptions =
    let none = { Trace = Set.empty; SkipAttention = Set.empty }

/// One layer's recorded activations (host copies).
type LayerTrace =
    { Layer: int
      /// (B, T, D) RMSNorm_attn of the layer input: what the attention projections see.
      Input: float32[]
      /// (B, T, H, HeadDim) attention output before o_proj (Σ_j A_ij V_j, V with its bias).
      Context: float32[]
      /// (B, T, D) attention sublayer output after o_proj (and its bias).
      Output: float32[]
      /// (B, H, 2) per head: mean attention distance, mean entropy (IBackend.AttentionForward).
      Stats: float32[] }

/// Logits and traces of one forward call.
type ForwardResult =
    { /// (B, T, V), owned by the caller.
      Logits: Tensor
      Traces: LayerTrace list }

/// The saved state of a block's mixer.
type MixerSaved =
    | SoftmaxSaved of AttentionSaved
    | GdnSaved of GdnSaved

/// What a block's backward needs.
type BlockSaved =
    { /// The attention norm and the mixer; None when the sublayer was removed (inference only).
      Mixer: (NormSaved * MixerSaved) option
      /// The MLP norm (its input is h, the stream after the mixer) and the MLP.
      MlpNorm: NormSaved
      Mlp: MlpSaved }

let private checkInputs (c: ModelConfig) (ids: int[]) (B: int) (T: int) =
    if B <= 0 || T <= 0 || ids.Length <> B * T then invalidArg "ids" $"{ids.Length} ids do not fill [B={B}, T={T}]"
    if T > c.Context then invalidArg "T" $"sequence length {T} exceeds the model's context {c.Context}"
    for id in ids do
        if id < 0 || id >= c.Vocab then invalidArg "ids" $"token id {id} is outside the vocabulary [0, {c.Vocab})"

/// One block: out (B, T, D) from x (B, T, D). `runMixer` false skips the attention norm and mixer
/// entirely; `addMixer` false computes it (for a trace) but leaves it out of the residual stream.
/// `onAttention` sees the norm, the attention's saved state and its output.
let private blockForward (m: DeviceDecoder) (scratch: Scratch) (arena: Arena) (blk: Block) (x: Tensor) (out: Tensor)
                         (runMixer: bool) (addMixer: bool) (stats: Tensor option)
                         (onAttention: (NormSaved -> AttentionSaved -> Tensor -> unit) option) : BlockSaved =
    let be, c = m.Backend, m.Config
    let eps = float32 c.NormEps
    let T = x.Shape[1]
    let mixer =
        if not runMixer then None
        else
            let n = RmsNorm.forward be arena blk.AttnNorm eps x
            let mixOut = scratch.Get("blk.mix", x.Shape)
            let saved =
                match blk.Mixer with
                | Softmax a ->
                    let cos, sin = m.Rope T
                    let s = Attention.forward be scratch arena c a n.Y cos sin stats mixOut
                    onAttention |> Option.iter (fun f -> f n s mixOut)
                    SoftmaxSaved s
                | Gdn g -> GdnSaved(Gdn.forward be scratch arena g n.Y mixOut)
            Some(n, saved)
    let h =
        match mixer with
        | Some _ when addMixer ->
            let h = arena.Alloc x.Shape
            be.Add(x, scratch.Get("blk.mix", x.Shape), h)
            h
        | _ -> x
    let n2 = RmsNorm.forward be arena blk.MlpNorm eps h
    let down = scratch.Get("blk.down", x.Shape)
    let mlp = Mlp.forward be scratch arena blk.Mlp n2.Y down
    be.Add(h, down, out)
    { Mixer = (if addMixer then mixer else None); MlpNorm = n2; Mlp = mlp }

/// Runs the forward on ids (B·T, row-major) and returns logits (B, T, V) plus the requested traces.
let forward (m: DeviceDecoder) (ids: int[]) (B: int) (T: int) (opts: ForwardOptions) : ForwardResult =
    let c, be = m.Config, m.Backend
    checkInputs c ids B T
    for li in opts.Trace do
        if li < 0 || li >= m.Blocks.Length then invalidArg "opts" $"trace of layer {li}: the model has {m.Blocks.Length} layers"
        match m.Blocks[li].Mixer with
        | Gdn _ -> invalidArg "opts" $"trace of layer {li}: only softmax-attention layers are traced"
        | Softmax _ -> ()
    use scratch = new Scratch(be)
    use arena = new Arena(be)
    use idsT = be.FromInts(ids, B * T)
    let stats = if opts.Trace.IsEmpty then None else Some(scratch.Get("dec.stats", [| B; c.Heads; 2 |]))
    let traces = Collections.Generic.List<LayerTrace>()
    let mutable x = scratch.Get("dec.x0", [| B; T; c.Dim |])
    let mutable y = scratch.Get("dec.x1", [| B; T; c.Dim |])
    Embedding.forward be m.Embedding idsT x
    for li in 0 .. m.Blocks.Length - 1 do
        arena.Reset()
        let tracing = opts.Trace.Contains li
        let skip = opts.SkipAttention.Contains li
        let record (n: NormSaved) (s: AttentionSaved) (out: Tensor) =
            if tracing then
                traces.Add
                    { Layer = li; Input = n.Y.ToArray(); Context = s.O.ToArray(); Output = out.ToArray()
                      Stats = stats.Value.ToArray() }
        blockForward m scratch arena m.Blocks[li] x y (not skip || tracing) (not skip)
            (if tracing then stats else None) (Some record) |> ignore
        let t = x
        x <- y
        y <- t
    arena.Reset()
    let logits = be.Allocate [| B; T; c.Vocab |]
    try Head.forward be scratch arena m.Head (float32 c.NormEps) x logits |> ignore
    with _ ->
        logits.Dispose()
        reraise ()
    { Logits = logits; Traces = List.ofSeq traces }

/// Logits (B·T·V, host) of a forward without traces.
let logits (m: DeviceDecoder) (ids: int[]) (B: int) (T: int) : float32[] =
    let r = forward m ids B T ForwardOptions.none
    try r.Logits.ToArray() finally r.Logits.Dispose()

/// Options of a training forward.
type TrainOptions =
    { /// Keep only each block's input and rebuild the block's activations during the backward (one block's
      /// worth of saved memory instead of L; the same gradients bit for bit, about one more forward of time).
      Recompute: bool }

module TrainOptions =
    let defaults = { Recompute = false }

/// The state one training forward leaves for its backward. Valid until the next trainForward on the same
/// decoder (the saved tensors live in the decoder's arenas); dispose to free the ids.
type TrainPass =
    { B: int
      T: int
      Generation: int
      Recompute: bool
      /// (B·T) token ids.
      Ids: Tensor
      /// (B, T, D) the stream entering each block, then the last stream: L + 1 tensors.
      Streams: Tensor[]
      /// Per block, when not recomputing.
      Blocks: BlockSaved[]
      HeadNorm: NormSaved
      /// (B, T, V); the caller may overwrite it (e.g. with dlogits).
      Logits: Tensor }
    interface IDisposable with
        member p.Dispose() = p.Ids.Dispose()

/// The training forward on ids (B·T): logits and everything the backward needs.
let trainForward (m: DeviceDecoder) (ids: int[]) (B: int) (T: int) (opts: TrainOptions) : TrainPass =
    let c, be = m.Config, m.Backend
    checkInputs c ids B T
    m.TrainGeneration <- m.TrainGeneration + 1
    let scratch, saved = m.TrainScratch, m.SavedArena
    saved.Reset()
    let idsT = be.FromInts(ids, B * T)
    let L = m.Blocks.Length
    let streams = Array.init (L + 1) (fun _ -> saved.Alloc [| B; T; c.Dim |])
    Embedding.forward be m.Embedding idsT streams[0]
    let blocks =
        [| for l in 0 .. L - 1 do
               let arena = if opts.Recompute then m.BlockArena m.Blocks[l].Mixer else saved
               if opts.Recompute then arena.Reset()
               let s = blockForward m scratch arena m.Blocks[l] streams[l] streams[l + 1] true true None None
               if not opts.Recompute then s |]
    let logits = saved.Alloc [| B; T; c.Vocab |]
    let head = Head.forward be scratch saved m.Head (float32 c.NormEps) streams[L] logits
    { B = B; T = T; Generation = m.TrainGeneration; Recompute = opts.Recompute; Ids = idsT; Streams = streams
      Blocks = blocks; HeadNorm = head; Logits = logits }

/// dIn (B, T, D) written from dOut, the gradient of the block's output.
let private blockBackward (m: DeviceDecoder) (scratch: Scratch) (grads: Grads) (blk: Block) (s: BlockSaved)
                          (dOut: Tensor) (dIn: Tensor) =
    let be, c = m.Backend, m.Config
    let dxn = scratch.Get("blk.dxn", dOut.Shape)
    let dnorm = scratch.Get("blk.dnorm", dOut.Shape)
    let dh = scratch.Get("blk.dh", dOut.Shape)
    // x' = h + MLP(norm(h)).
    Mlp.backward be scratch grads blk.Mlp s.Mlp dOut dxn
    RmsNorm.backward be scratch grads blk.MlpNorm s.MlpNorm dxn dnorm
    be.Add(dOut, dnorm, dh)
    // h = x + Mixer(norm(x)).
    match s.Mixer with
    | None -> invalidOp "a block whose mixer was removed has no backward"
    | Some(n, mixer) ->
        match blk.Mixer, mixer with
        | Softmax a, SoftmaxSaved sa -> Attention.backward be scratch grads c a sa dh dxn
        | Gdn g, GdnSaved sg -> Gdn.backward be scratch grads g sg dh (Some dxn)
        | _ -> invalidOp "saved state of another mixer kind"
        RmsNorm.backward be scratch grads blk.AttnNorm n dxn dnorm
        be.Add(dh, dnorm, dIn)

/// Reverse of `trainForward` from dlogits (B, T, V): accumulates into the gradients of `grads` (the caller
/// zeroes them once per step; micro-batches accumulate).
let backward (m: DeviceDecoder) (pass: TrainPass) (dlogits: Tensor) (grads: Grads) =
    let c, be = m.Config, m.Backend
    if pass.Generation <> m.TrainGeneration then
        invalidOp "this training pass was overwritten by a later trainForward on the same decoder"
    let scratch = m.TrainScratch
    let shape = [| pass.B; pass.T; c.Dim |]
    let mutable dOut = scratch.Get("dec.da", shape)
    let mutable dIn = scratch.Get("dec.db", shape)
    Head.backward be scratch grads m.Head pass.HeadNorm dlogits dOut
    for l in m.Blocks.Length - 1 .. -1 .. 0 do
        let saved =
            if pass.Recompute then
                let arena = m.BlockArena m.Blocks[l].Mixer
                arena.Reset()
                let out = scratch.Get("dec.recomputed", shape)
                blockForward m scratch arena m.Blocks[l] pass.Streams[l] out true true None None
            else pass.Blocks[l]
        blockBackward m scratch grads m.Blocks[l] saved dOut dIn
        let t = dOut
        dOut <- dIn
        dIn <- t
    Embedding.backward be grads m.Embedding pass.Ids dOut

/// Bytes per token of the saved activations of a training pass (fp32), as trainForward allocates them:
///   streams (L+1)·D, final norm D + 1, logits V; per block: norms 2(D + 1), h D, MLP 2F, and
///   softmax: 2·QDim + 2·KvDim + H (q, o, k, v, lse) plus QDim + KvDim + H + Hkv with the Qwen3 q/k norm;
///   gdn_v4: 10·H·hd + 5·H.
/// Under recompute only one block's share is held per mixer kind present (one block is rebuilt at a time,
/// in an arena per kind).
let savedBytesPerToken (c: ModelConfig) (gdnLayers: Set<int>) (recompute: bool) : int64 =
    let D, F, H, Hkv, hd = int64 c.Dim, int64 c.Hidden, int64 c.Heads, int64 c.KvHeads, int64 c.HeadDim
    let q, kv = H * hd, Hkv * hd
    let block i =
        let mixer =
            if gdnLayers.Contains i then 10L * q + 5L * H
            else 2L * q + 2L * kv + H + (if c.QkNorm then q + kv + H + Hkv else 0L)
        2L * (D + 1L) + D + 2L * F + mixer
    let blocks = List.init c.Layers (fun i -> gdnLayers.Contains i, block i)
    let perBlock =
        if recompute then blocks |> List.groupBy fst |> List.sumBy (fun (_, bs) -> bs |> List.map snd |> List.max)
        else blocks |> List.sumBy snd
    4L * (int64 (c.Layers + 1) * D + D + 1L + int64 c.Vocab + perBlock)
