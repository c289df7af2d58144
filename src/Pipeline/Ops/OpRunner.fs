/// Runs one backend op on named host tensors: the engine of `taylor-calibrate op`, which lets anyone
/// cross-check our kernels against another framework (inputs and outputs are safetensors files). Each op
/// documents its tensor names in `catalogue`; inputs are validated (presence, shape, finiteness) before
/// anything runs, and errors name the tensor and what was expected.
module TaylorCalibrate.Pipeline.Ops.OpRunner

open System
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Io

/// A host tensor: shape and values (floats, or ids for index tensors).
type HostTensor = { Shape: int[]; Data: Safetensors.Data }

/// Flags of `op`; each op reads the ones it documents.
type OpOptions =
    { TransA: bool
      TransB: bool
      Alpha: float32
      Beta: float32
      Eps: float32 option
      Scale: float32 option
      GradScale: float32 option
      Backward: bool
      Layout: RopeLayout
      Theta: float
      LearningRate: float32
      Step: int
      WeightDecay: float32
      Beta1: float32
      Beta2: float32
      AdamEps: float32
      MaxNorm: float32 }

let defaultOptions =
    { TransA = false; TransB = false; Alpha = 1.0f; Beta = 0.0f; Eps = None; Scale = None; GradScale = None
      Backward = false; Layout = RopeLayout.HalfSplit; Theta = 10000.0; LearningRate = 1e-3f; Step = 1
      WeightDecay = 0.01f; Beta1 = 0.9f; Beta2 = 0.999f; AdamEps = 1e-8f; MaxNorm = 1.0f }

/// One line per op: its name, inputs, outputs and flags (printed by `op --help`).
let catalogue =
    [ "matmul", "a [M,K] (stored [K,M] with --trans-a), b [K,N] (stored [N,K] with --trans-b), optional c [M,N] (read when --beta ≠ 0) -> c [M,N] = alpha·op(a)·op(b) + beta·c. Flags: --trans-a --trans-b --alpha --beta"
      "add", "a, b (same element count) -> y = a + b"
      "mul", "a, b -> y = a ⊙ b"
      "scale", "x -> y = s·x. Flag: --scale s"
      "silu", "x -> y;  --backward: x, dy -> dx"
      "sigmoid", "x -> y;  --backward: x, dy -> dx"
      "softplus", "x -> y;  --backward: x, dy -> dx"
      "exp", "x -> y;  --backward: x, dy -> dx"
      "log", "x -> y;  --backward: x, dy -> dx"
      "swiglu", "a, b -> y = silu(a) ⊙ b;  --backward: a, b, dy -> da, db"
      "rmsnorm", "x [..,C], w [C] -> y, rstd [rows];  --backward: x, w, dy -> dx, dw. Flag: --eps (1e-5)"
      "l2norm", "x [..,C] -> y, rstd [rows];  --backward: x, dy -> dx. Flag: --eps (1e-6)"
      "rope", "x [B,T,H,D] -> y (rotated at positions 0..T-1);  --backward: dy -> dx (rotation by -angle). Flags: --theta (10000) --layout half|adjacent"
      "embedding", "table [V,D], ids [N] (int) -> y [N,D];  --backward: table (for its shape), ids, dy [N,D] -> dtable [V,D]"
      "softmax", "x [..,C] -> y (row softmax);  --backward: x, dy -> dx"
      "cross-entropy", "logits [N,V], targets [N] (int; <0 ignored) -> loss [N], dlogits [N,V] = grad-scale·(softmax − onehot). Flag: --grad-scale (1/N)"
      "kl", "teacher [N,V], student [N,V] -> loss [N] = KL(p_T‖p_S), dstudent = grad-scale·(p_S − p_T). Flag: --grad-scale (1/N)"
      "sum", "x -> y [1]"
      "mean", "x -> y [1]"
      "sum-of-squares", "x -> y [1]"
      "max-abs", "x -> y [1]"
      "adamw", "param, grad, m, v -> param, m, v after one step. Flags: --lr --step --weight-decay --beta1 --beta2 --adam-eps"
      "clip-grad-norm", "any tensors (the gradients) -> the same names scaled so the global norm ≤ max-norm, plus norm [1] (before clipping). Flag: --max-norm (1)" ]

let private fail e = raise (InputException e)
let private shapeText (s: int[]) = "[" + String.Join(",", s) + "]"
let private count (s: int[]) = s |> Array.fold (fun a d -> a * int64 d) 1L

/// Inputs of one op, with lookups that fail with a message naming the tensor.
type private Inputs(source: string, op: string, tensors: Map<string, HostTensor>) =
    member _.Has name = tensors.ContainsKey name
    member _.Names = tensors |> Map.keys |> List.ofSeq
    member _.Get(name: string) =
        match tensors.TryFind name with
        | Some t -> t
        | None ->
            let needs = catalogue |> List.find (fst >> (=) op) |> snd
            fail (MissingTensor(source, $"{name}' (op {op} needs: {needs})"))
    member this.Floats(name: string) =
        match (this.Get name).Data with
        | Safetensors.F32 a ->
            match a |> Array.tryFindIndex (fun x -> Single.IsNaN x || Single.IsInfinity x) with
            | Some i -> fail (InvalidValue(name, $"contains {a[i]} at flat index {i}; inputs must be finite"))
            | None -> a
        | Safetensors.I32 a -> a |> Array.map float32
    member this.Ids(name: string) =
        match (this.Get name).Data with
        | Safetensors.I32 a -> a
        | Safetensors.F32 a ->
            a |> Array.mapi (fun i x ->
                if x <> MathF.Round x || abs x > 1e9f then fail (InvalidValue(name, $"must hold integers (ids); element {i} is {x}"))
                int x)
    member this.Shape(name: string) = (this.Get name).Shape

let private expectShape (name: string) (expected: int[]) (actual: int[]) =
    if expected <> actual then fail (ShapeMismatch(name, expected, actual))

let private expectRank (name: string) (rank: int) (what: string) (actual: int[]) =
    if actual.Length <> rank then fail (InvalidValue(name, $"has shape {shapeText actual}, expected {what}"))

let private lastDim (name: string) (s: int[]) =
    if s.Length = 0 || s[s.Length - 1] = 0 then fail (InvalidValue(name, $"has shape {shapeText s}, expected at least one non-empty dimension"))
    s[s.Length - 1]

/// Runs `op` on `inputs` (read from `source`, used in messages) on backend `be`; returns the named outputs.
let run (be: IBackend) (op: string) (opts: OpOptions) (source: string) (inputs: Map<string, HostTensor>) : Result<(string * int[] * Safetensors.Data) list, InputError> =
    let inp = Inputs(source, op, inputs)
    let owned = Collections.Generic.List<Tensor>()
    let upload (name: string) =
        let t = be.FromArray(inp.Floats name, inp.Shape name)
        owned.Add t
        t
    let uploadIds (name: string) =
        let ids = inp.Ids name
        let t = be.FromInts(ids, inp.Shape name)
        owned.Add t
        t
    let alloc (shape: int[]) =
        let t = be.Allocate shape
        owned.Add t
        t
    let out (name: string) (t: Tensor) = name, t.Shape, Safetensors.F32(t.ToArray())
    let unary (u: UnaryOp) =
        if opts.Backward then
            let x = upload "x"
            let dy = upload "dy"
            expectShape "dy" x.Shape dy.Shape
            let dx = alloc x.Shape
            be.UnaryBackward(u, x, dy, dx)
            [ out "dx" dx ]
        else
            let x = upload "x"
            let y = alloc x.Shape
            be.Unary(u, x, y)
            [ out "y" y ]
    let reduce (r: ReduceOp) =
        let x = upload "x"
        let y = alloc [| 1 |]
        be.Reduce(r, x, y)
        [ out "y" y ]
    let gradScaleFor (n: int) = opts.GradScale |> Option.defaultValue (if n = 0 then 1.0f else 1.0f / float32 n)
    try
        try
            let outputs =
                match op with
                | "matmul" ->
                    let sa, sb = inp.Shape "a", inp.Shape "b"
                    expectRank "a" 2 (if opts.TransA then "[K,M]" else "[M,K]") sa
                    expectRank "b" 2 (if opts.TransB then "[N,K]" else "[K,N]") sb
                    let m, k = if opts.TransA then sa[1], sa[0] else sa[0], sa[1]
                    let kb, n = if opts.TransB then sb[1], sb[0] else sb[0], sb[1]
                    if kb <> k then
                        let flags = (if opts.TransA then " --trans-a" else "") + (if opts.TransB then " --trans-b" else "")
                        fail (InvalidValue("b", $"has shape {shapeText sb}; its K ({kb}) must equal the K of 'a' {shapeText sa} ({k}){flags}"))
                    let a, b = upload "a", upload "b"
                    let c =
                        if opts.Beta <> 0.0f then
                            let c = upload "c"
                            expectShape "c" [| m; n |] c.Shape
                            c
                        else alloc [| m; n |]
                    let spec = GemmSpec(m, n, k, opts.TransA, opts.TransB, opts.Alpha, opts.Beta)
                    be.Gemm(a, b, c, spec)
                    [ out "c" c ]
                | "add" | "mul" ->
                    let a, b = upload "a", upload "b"
                    if a.Count <> b.Count then fail (ShapeMismatch("b", a.Shape, b.Shape))
                    let y = alloc a.Shape
                    (if op = "add" then be.Add(a, b, y) else be.Mul(a, b, y))
                    [ out "y" y ]
                | "scale" ->
                    let s = opts.Scale |> Option.defaultWith (fun () -> fail (InvalidOption("--scale", "op scale needs --scale S")))
                    let x = upload "x"
                    let y = alloc x.Shape
                    be.Scale(x, s, y)
                    [ out "y" y ]
                | "silu" -> unary UnaryOp.Silu
                | "sigmoid" -> unary UnaryOp.Sigmoid
                | "softplus" -> unary UnaryOp.Softplus
                | "exp" -> unary UnaryOp.Exp
                | "log" -> unary UnaryOp.Log
                | "swiglu" ->
                    let a, b = upload "a", upload "b"
                    expectShape "b" a.Shape b.Shape
                    if opts.Backward then
                        let dy = upload "dy"
                        expectShape "dy" a.Shape dy.Shape
                        let da, db = alloc a.Shape, alloc a.Shape
                        be.SwiGluBackward(a, b, dy, da, db)
                        [ out "da" da; out "db" db ]
                    else
                        let y = alloc a.Shape
                        be.SwiGlu(a, b, y)
                        [ out "y" y ]
                | "rmsnorm" ->
                    let c = lastDim "x" (inp.Shape "x")
                    let x, w = upload "x", upload "w"
                    expectShape "w" [| c |] w.Shape
                    let rows = int (x.Count / int64 c)
                    let rstd = alloc [| rows |]
                    let y = alloc x.Shape
                    be.RmsNorm(x, w, y, rstd, defaultArg opts.Eps 1e-5f)
                    if opts.Backward then
                        let dy = upload "dy"
                        expectShape "dy" x.Shape dy.Shape
                        let dx, dw = alloc x.Shape, alloc w.Shape
                        be.RmsNormBackward(dy, x, w, rstd, dx, dw)
                        [ out "dx" dx; out "dw" dw ]
                    else [ out "y" y; out "rstd" rstd ]
                | "l2norm" ->
                    let c = lastDim "x" (inp.Shape "x")
                    let x = upload "x"
                    let rows = int (x.Count / int64 c)
                    let y, rstd = alloc x.Shape, alloc [| rows |]
                    be.L2Norm(x, y, rstd, c, defaultArg opts.Eps 1e-6f)
                    if opts.Backward then
                        let dy = upload "dy"
                        expectShape "dy" x.Shape dy.Shape
                        let dx = alloc x.Shape
                        be.L2NormBackward(dy, y, rstd, dx, c)
                        [ out "dx" dx ]
                    else [ out "y" y; out "rstd" rstd ]
                | "rope" ->
                    let name = if opts.Backward then "dy" else "x"
                    let s = inp.Shape name
                    expectRank name 4 "[B,T,H,D]" s
                    if s[3] % 2 <> 0 then fail (InvalidValue(name, $"has head size {s[3]}; RoPE needs an even head size"))
                    let x = upload name
                    let struct (cosT, sinT) = RopeTables.Build(s[1], s[3], opts.Theta)
                    let cos = be.FromArray(cosT, s[1], s[3] / 2)
                    owned.Add cos
                    let sin = be.FromArray(sinT, s[1], s[3] / 2)
                    owned.Add sin
                    let y = alloc s
                    be.Rope(x, cos, sin, y, opts.Layout, opts.Backward)
                    [ out (if opts.Backward then "dx" else "y") y ]
                | "embedding" ->
                    let st = inp.Shape "table"
                    expectRank "table" 2 "[V,D]" st
                    expectRank "ids" 1 "[N]" (inp.Shape "ids")
                    let ids = inp.Ids "ids"
                    match ids |> Array.tryFindIndex (fun i -> i < 0 || i >= st[0]) with
                    | Some i -> fail (InvalidValue("ids", $"element {i} is {ids[i]}, outside [0, {st[0]}) (the rows of 'table')"))
                    | None -> ()
                    let idT = uploadIds "ids"
                    if opts.Backward then
                        let dy = upload "dy"
                        expectShape "dy" [| ids.Length; st[1] |] dy.Shape
                        let dtable = alloc st
                        be.EmbeddingBackward(idT, dy, dtable)
                        [ out "dtable" dtable ]
                    else
                        let table = upload "table"
                        let y = alloc [| ids.Length; st[1] |]
                        be.Embedding(table, idT, y)
                        [ out "y" y ]
                | "softmax" ->
                    let c = lastDim "x" (inp.Shape "x")
                    let x = upload "x"
                    let y = alloc x.Shape
                    be.Softmax(x, y, c)
                    if opts.Backward then
                        let dy = upload "dy"
                        expectShape "dy" x.Shape dy.Shape
                        let dx = alloc x.Shape
                        be.SoftmaxBackward(y, dy, dx, c)
                        [ out "dx" dx ]
                    else [ out "y" y ]
                | "cross-entropy" ->
                    let sl = inp.Shape "logits"
                    expectRank "logits" 2 "[N,V]" sl
                    expectShape "targets" [| sl[0] |] (inp.Shape "targets")
                    let targets = inp.Ids "targets"
                    match targets |> Array.tryFindIndex (fun t -> t >= sl[1]) with
                    | Some i -> fail (InvalidValue("targets", $"element {i} is {targets[i]}, outside the vocabulary [0, {sl[1]})"))
                    | None -> ()
                    let logits, tT = upload "logits", uploadIds "targets"
                    let loss = alloc [| sl[0] |]
                    be.CrossEntropy(logits, tT, loss, logits, gradScaleFor sl[0])
                    [ out "loss" loss; out "dlogits" logits ]
                | "kl" ->
                    let st = inp.Shape "teacher"
                    expectRank "teacher" 2 "[N,V]" st
                    expectShape "student" st (inp.Shape "student")
                    let t, s = upload "teacher", upload "student"
                    let loss = alloc [| st[0] |]
                    be.KlDivergence(t, s, loss, s, gradScaleFor st[0])
                    [ out "loss" loss; out "dstudent" s ]
                | "sum" -> reduce ReduceOp.Sum
                | "mean" -> reduce ReduceOp.Mean
                | "sum-of-squares" -> reduce ReduceOp.SumOfSquares
                | "max-abs" -> reduce ReduceOp.MaxAbs
                | "adamw" ->
                    let p = upload "param"
                    let tensors = [ "grad"; "m"; "v" ] |> List.map (fun n -> let t = upload n in expectShape n p.Shape t.Shape; t)
                    if opts.Step < 1 then fail (InvalidOption("--step", $"must be ≥ 1, got {opts.Step}"))
                    let spec = AdamWSpec(opts.LearningRate, opts.Step, opts.WeightDecay, opts.Beta1, opts.Beta2, opts.AdamEps)
                    be.AdamW(p, tensors[0], tensors[1], tensors[2], spec)
                    [ out "param" p; out "m" tensors[1]; out "v" tensors[2] ]
                | "clip-grad-norm" ->
                    let names = inp.Names
                    if names.IsEmpty then fail (InvalidValue("(inputs)", "clip-grad-norm needs at least one gradient tensor"))
                    let grads = names |> List.map upload
                    let norm = alloc [| 1 |]
                    be.ClipGradNorm(ResizeArray grads, opts.MaxNorm, norm)
                    (List.map2 out names grads) @ [ out "norm" norm ]
                | other ->
                    let known = catalogue |> List.map fst |> String.concat ", "
                    fail (InvalidOption("op", $"unknown op '{other}'; known ops: {known}"))
            Ok outputs
        with InputException e -> Error e
    finally
        for t in owned do t.Dispose()
