/// `taylor-calibrate op NAME --inputs IN.safetensors --out OUT.safetensors [--device D] [flags]`: runs one
/// kernel on named tensors so anyone can cross-check it against another framework. The op table and the
/// tensor names live in Pipeline/Ops/OpRunner.fs; `op --help` prints them.
module TaylorCalibrate.Cli.OpCommand

open Argu
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Io
open TaylorCalibrate.Pipeline.Ops
open TaylorCalibrate.Cli.Common

type Args =
    | [<MainCommand; Mandatory>] Name of op: string
    | [<Mandatory>] Inputs of path: string
    | [<Mandatory>] Out of path: string
    | Device of spec: string
    | Trans_A
    | Trans_B
    | Alpha of float32
    | Beta of float32
    | Eps of float32
    | Scale of float32
    | Grad_Scale of float32
    | Backward
    | Layout of RopeLayoutArg
    | Theta of float
    | Lr of float32
    | Step of int
    | Weight_Decay of float32
    | Beta1 of float32
    | Beta2 of float32
    | Adam_Eps of float32
    | Max_Norm of float32
    | Stats
    | Probs
    | L2norm_Qk
    | Mode of GdnModeArg
    | Chunk_Size of int
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Name _ -> "the op; one of: " + (OpRunner.catalogue |> List.map fst |> String.concat ", ")
            | Inputs _ -> "safetensors file with the named input tensors (F32/F16/BF16; ids as I32/I64)"
            | Out _ -> "safetensors file to write the named outputs to (F32), atomically"
            | Device _ -> "auto (default) | cpu | vulkan | vulkan:N | vulkan:NAME"
            | Trans_A -> "matmul: a is stored [K,M]"
            | Trans_B -> "matmul: b is stored [N,K]"
            | Alpha _ -> "matmul: alpha (1)"
            | Beta _ -> "matmul: beta (0); when non-zero the input c is read"
            | Eps _ -> "rmsnorm (1e-5) / l2norm (1e-6): epsilon inside the square root"
            | Scale _ -> "scale: the factor"
            | Grad_Scale _ -> "cross-entropy / kl: gradient scale (1/N)"
            | Backward -> "run the op's backward (see the tensor names below)"
            | Layout _ -> "rope: half (Hugging Face rotate-half, default) or adjacent (llama2.c pairs)"
            | Theta _ -> "rope: base θ (10000)"
            | Lr _ -> "adamw: learning rate (1e-3)"
            | Step _ -> "adamw: step t ≥ 1 for bias correction (1)"
            | Weight_Decay _ -> "adamw: decoupled weight decay (0.01)"
            | Beta1 _ -> "adamw: β₁ (0.9)"
            | Beta2 _ -> "adamw: β₂ (0.999)"
            | Adam_Eps _ -> "adamw: ε (1e-8)"
            | Max_Norm _ -> "clip-grad-norm: maximum global norm (1)"
            | Stats -> "attention: also write the per-head mean attention distance and entropy"
            | Probs -> "attention: also write the probabilities [B,H,T,T] (small T only)"
            | L2norm_Qk -> "gdn: L2-normalise q and k inside the kernel (eps 1e-6)"
            | Mode _ -> "gdn: chunk (default), recurrent, or auto (the faster on this device, by measurement)"
            | Chunk_Size _ -> "gdn: chunk size 16, 32 or 64 (default 64)"

and RopeLayoutArg =
    | Half
    | Adjacent

and GdnModeArg =
    | Chunk
    | Recurrent
    | Auto

/// The per-op tensor names, appended to `op --help`.
let opTable () =
    let lines = OpRunner.catalogue |> List.map (fun (n, d) -> $"  %-15s{n} {d}")
    "OPS (inputs -> outputs):\n" + String.concat "\n" lines

let private readInputs (path: string) : Map<string, OpRunner.HostTensor> =
    let h = Safetensors.readHeader path |> orFail
    h.Entries
    |> List.map (fun e ->
        let data =
            if e.DType = "I32" || e.DType = "I64" then Safetensors.I32(Safetensors.readI32 h e.Name |> orFail)
            else Safetensors.F32(Safetensors.readF32 h e.Name |> orFail)
        e.Name, ({ Shape = e.Shape; Data = data }: OpRunner.HostTensor))
    |> Map.ofList

let run (args: ParseResults<Args>) =
    let d = OpRunner.defaultOptions
    let opts: OpRunner.OpOptions =
        { TransA = args.Contains Trans_A
          TransB = args.Contains Trans_B
          Alpha = args.GetResult(Alpha, d.Alpha)
          Beta = args.GetResult(Beta, d.Beta)
          Eps = args.TryGetResult Eps
          Scale = args.TryGetResult Scale
          GradScale = args.TryGetResult Grad_Scale
          Backward = args.Contains Backward
          Layout = (match args.GetResult(Layout, Half) with Half -> RopeLayout.HalfSplit | Adjacent -> RopeLayout.Adjacent)
          Theta = args.GetResult(Theta, d.Theta)
          LearningRate = args.GetResult(Lr, d.LearningRate)
          Step = args.GetResult(Step, d.Step)
          WeightDecay = args.GetResult(Weight_Decay, d.WeightDecay)
          Beta1 = args.GetResult(Beta1, d.Beta1)
          Beta2 = args.GetResult(Beta2, d.Beta2)
          AdamEps = args.GetResult(Adam_Eps, d.AdamEps)
          MaxNorm = args.GetResult(Max_Norm, d.MaxNorm)
          Stats = args.Contains Stats
          Probs = args.Contains Probs
          L2NormQK = args.Contains L2norm_Qk
          GdnMode =
            match args.GetResult(Mode, Chunk) with
            | Chunk -> Some GdnMode.Chunked
            | Recurrent -> Some GdnMode.Recurrent
            | Auto -> None
          ChunkSize = args.GetResult(Chunk_Size, d.ChunkSize) }
    let op = args.GetResult Name
    if not (OpRunner.catalogue |> List.exists (fst >> (=) op)) then
        let known = OpRunner.catalogue |> List.map fst |> String.concat ", "
        usageError $"unknown op '{op}'; known ops: {known}"
    let inputPath = args.GetResult Inputs
    let outPath = args.GetResult Out |> nonEmptyPath "--out"
    let inputs = readInputs inputPath
    use be = openDevice (args.TryGetResult Device)
    let outputs = OpRunner.run be op opts inputPath inputs |> orFail
    Safetensors.write outPath (Map [ "op", op; "device", be.Name ]) outputs
    for (n, s, _) in outputs do
        printfn "%s [%s]" n (System.String.Join(",", s))
    printfn "wrote %s (device %s)" outPath be.Name
    0
