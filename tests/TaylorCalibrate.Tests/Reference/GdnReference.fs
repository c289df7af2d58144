/// The defining double-precision reference of the gated delta rule (docs/kernels.md §3.1): the token loop
/// S_t = e^{g_t}(I − β_t k_t k_tᵀ)S_{t−1} + β_t k_t v_tᵀ, o_t = scale·S_tᵀq_t, with the state S [K,V], its
/// BPTT backward (storing every S_{t−1}; tiny shapes only) and the optional L2 norm of q, k
/// (rstd = (Σx² + 1e-6)^−½) with its gradient. Layouts as the contract: q, k [B,T,H,K]; v [B,T,H,V];
/// g, beta [B,T,H]; h0, ht [B,H,K,V].
module TaylorCalibrate.Tests.GdnReference

/// One problem in double precision.

/// Σ_{i<n} f i, a plain loop (the references run on shapes up to T = 300, D = 128).
let inline private sumOver (n: int) ([<InlineIfLambda>] f: int -> float) =
    let mutable s = 0.0
    for i in 0 .. n - 1 do s <- s + f i
    s

type Inputs =
    { B: int; T: int; H: int; K: int; V: int
      Q: float[]; Kx: float[]; Vx: float[]; G: float[]; Beta: float[]
      H0: float[] option
      Scale: float
      L2: bool }

/// o [B,T,H,V], ht [B,H,K,V].
type Outputs = { O: float[]; Ht: float[] }

/// Gradients w.r.t. every input (dh0 w.r.t. the initial state, zero or given).
type Grads = { DQ: float[]; DK: float[]; DV: float[]; DG: float[]; DBeta: float[]; DH0: float[] }

let l2Eps = 1e-6

let private idx4 (x: Inputs) (D: int) b t h i = ((b * x.T + t) * x.H + h) * D + i
let private idx3 (x: Inputs) b t h = (b * x.T + t) * x.H + h

/// Row t of head (b, h) of a [B,T,H,D] tensor, L2-normalised when asked: (y, rstd).
let private row (x: Inputs) (a: float[]) (D: int) (normalise: bool) b t h =
    let r = Array.init D (fun i -> a[idx4 x D b t h i])
    if normalise then
        let rstd = 1.0 / sqrt (Array.sumBy (fun e -> e * e) r + l2Eps)
        Array.map (fun e -> e * rstd) r, rstd
    else r, 1.0

/// Runs the token loop on head (b, h), calling `onStep t S_{t−1} S_t u_t` after each step; returns the final state.
let private run (x: Inputs) b h (onStep: int -> float[,] -> float[,] -> float[] -> unit) =
    let K, V = x.K, x.V
    let S =
        match x.H0 with
        | Some h0 -> Array2D.init K V (fun i j -> h0[((b * x.H + h) * K + i) * V + j])
        | None -> Array2D.zeroCreate K V
    for t in 0 .. x.T - 1 do
        let prev = Array2D.copy S
        let k, _ = row x x.Kx K x.L2 b t h
        let decay = exp x.G[idx3 x b t h]
        let beta = x.Beta[idx3 x b t h]
        for i in 0 .. K - 1 do
            for j in 0 .. V - 1 do S[i, j] <- decay * S[i, j]
        let u = Array.init V (fun j -> beta * (x.Vx[idx4 x V b t h j] - sumOver (K) (fun i -> S[i, j] * k[i])))
        for i in 0 .. K - 1 do
            for j in 0 .. V - 1 do S[i, j] <- S[i, j] + k[i] * u[j]
        onStep t prev S u
    S

/// Forward: o and the final state.
let forward (x: Inputs) : Outputs =
    let o = Array.zeroCreate (x.B * x.T * x.H * x.V)
    let ht = Array.zeroCreate (x.B * x.H * x.K * x.V)
    for b in 0 .. x.B - 1 do
        for h in 0 .. x.H - 1 do
            let S =
                run x b h (fun t _ S _ ->
                    let q, _ = row x x.Q x.K x.L2 b t h
                    for j in 0 .. x.V - 1 do
                        let mutable s = 0.0
                        for i in 0 .. x.K - 1 do s <- s + S[i, j] * q[i]
                        o[idx4 x x.V b t h j] <- x.Scale * s)
            for i in 0 .. x.K - 1 do
                for j in 0 .. x.V - 1 do ht[((b * x.H + h) * x.K + i) * x.V + j] <- S[i, j]
    { O = o; Ht = ht }

/// BPTT (docs/kernels.md §3.1) for the loss Σ o⊙dO + Σ ht⊙dht.
let backward (x: Inputs) (dO: float[]) (dht: float[] option) : Grads =
    let K, V = x.K, x.V
    let g = { DQ = Array.zeroCreate x.Q.Length; DK = Array.zeroCreate x.Kx.Length; DV = Array.zeroCreate x.Vx.Length
              DG = Array.zeroCreate x.G.Length; DBeta = Array.zeroCreate x.Beta.Length
              DH0 = Array.zeroCreate (x.B * x.H * K * V) }
    for b in 0 .. x.B - 1 do
        for h in 0 .. x.H - 1 do
            let prevs = Array.zeroCreate x.T
            let us = Array.zeroCreate x.T
            run x b h (fun t prev _ u -> prevs[t] <- prev; us[t] <- u) |> ignore
            let dS =
                match dht with
                | Some d -> Array2D.init K V (fun i j -> d[((b * x.H + h) * K + i) * V + j])
                | None -> Array2D.zeroCreate K V
            for t in x.T - 1 .. -1 .. 0 do
                let q, rq = row x x.Q K x.L2 b t h
                let k, rk = row x x.Kx K x.L2 b t h
                let v = Array.init V (fun j -> x.Vx[idx4 x V b t h j])
                let dOt = Array.init V (fun j -> dO[idx4 x V b t h j])
                let decay = exp x.G[idx3 x b t h]
                let beta = x.Beta[idx3 x b t h]
                let Sp = Array2D.map (fun s -> decay * s) prevs[t]          // S′ = e^g S_{t−1}
                let u = us[t]
                let St = Array2D.init K V (fun i j -> Sp[i, j] + k[i] * u[j])
                for i in 0 .. K - 1 do
                    for j in 0 .. V - 1 do dS[i, j] <- dS[i, j] + x.Scale * q[i] * dOt[j]
                let dq = Array.init K (fun i -> x.Scale * sumOver (V) (fun j -> St[i, j] * dOt[j]))
                let du = Array.init V (fun j -> sumOver (K) (fun i -> dS[i, j] * k[i]))
                let dk = Array.init K (fun i -> sumOver (V) (fun j -> dS[i, j] * u[j] - beta * Sp[i, j] * du[j]))
                let kSp = Array.init V (fun j -> sumOver (K) (fun i -> Sp[i, j] * k[i]))
                let dbeta = sumOver (V) (fun j -> du[j] * (v[j] - kSp[j]))
                let mutable dgt = 0.0
                for i in 0 .. K - 1 do
                    for j in 0 .. V - 1 do
                        let dSp = dS[i, j] - beta * k[i] * du[j]
                        dgt <- dgt + Sp[i, j] * dSp
                        dS[i, j] <- decay * dSp
                // through the L2 norm: dx = rstd·(dy − (dy·y)·y)
                let unnorm (dy: float[]) (y: float[]) r =
                    if x.L2 then
                        let dot = Array.fold2 (fun s a c -> s + a * c) 0.0 dy y
                        Array.map2 (fun a c -> r * (a - dot * c)) dy y
                    else dy
                let dqx, dkx = unnorm dq q rq, unnorm dk k rk
                for i in 0 .. K - 1 do
                    g.DQ[idx4 x K b t h i] <- dqx[i]
                    g.DK[idx4 x K b t h i] <- dkx[i]
                for j in 0 .. V - 1 do g.DV[idx4 x V b t h j] <- beta * du[j]
                g.DG[idx3 x b t h] <- dgt
                g.DBeta[idx3 x b t h] <- dbeta
            for i in 0 .. K - 1 do
                for j in 0 .. V - 1 do g.DH0[((b * x.H + h) * K + i) * V + j] <- dS[i, j]
    g

/// The scalar loss whose gradient `backward` computes (for finite differences).
let loss (x: Inputs) (dO: float[]) (dht: float[] option) =
    let r = forward x
    let a = Array.fold2 (fun s o d -> s + o * d) 0.0 r.O dO
    match dht with
    | Some d -> a + Array.fold2 (fun s o d -> s + o * d) 0.0 r.Ht d
    | None -> a
