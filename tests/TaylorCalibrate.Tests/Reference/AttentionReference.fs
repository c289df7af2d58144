/// The defining double-precision reference of causal GQA softmax attention (docs/kernels.md §2): explicit
/// scores s_ij = scale·q_i·k_j (j ≤ i), a max-shifted softmax per row, o_i = Σ_j p_ij v_j, lse_i, the
/// per-head statistics (mean over rows of Σ_j p_ij·max(i−j, 0.5) and of −Σ_j p_ij ln p_ij; docs/method.md §5.1)
/// and the backward from the textbook formulas (δ_i = Σ_j p_ij·dp_ij, not dO·O). q [B,T,H,D];
/// k, v [B,T,Hkv,D]; query head h reads kv head h / (H/Hkv).
module TaylorCalibrate.Tests.AttentionReference


/// Σ_{i<n} f i, a plain loop (the references run on shapes up to T = 300, D = 128).
let inline private sumOver (n: int) ([<InlineIfLambda>] f: int -> float) =
    let mutable s = 0.0
    for i in 0 .. n - 1 do s <- s + f i
    s

type Inputs =
    { B: int; T: int; H: int; Hkv: int; D: int
      Q: float[]; K: float[]; V: float[]
      Scale: float }

/// o [B,T,H,D]; lse [B,H,T]; stats [B,H,2] (distance, entropy); probs [B,H,T,T].
type Outputs = { O: float[]; Lse: float[]; Stats: float[]; Probs: float[] }

type Grads = { DQ: float[]; DK: float[]; DV: float[] }

let private qi (x: Inputs) b t h d = ((b * x.T + t) * x.H + h) * x.D + d
let private ki (x: Inputs) b t hk d = ((b * x.T + t) * x.Hkv + hk) * x.D + d

/// Row i of the probabilities of head (b, h) (length i + 1) and its log-sum-exp.
let private probsRow (x: Inputs) b h i =
    let hk = h / (x.H / x.Hkv)
    let s = Array.init (i + 1) (fun j -> x.Scale * sumOver (x.D) (fun d -> x.Q[qi x b i h d] * x.K[ki x b j hk d]))
    let m = Array.max s
    let l = Array.sumBy (fun e -> exp (e - m)) s
    Array.map (fun e -> exp (e - m) / l) s, m + log l

let forward (x: Inputs) : Outputs =
    let o = Array.zeroCreate x.Q.Length
    let lse = Array.zeroCreate (x.B * x.H * x.T)
    let stats = Array.zeroCreate (x.B * x.H * 2)
    let probs = Array.zeroCreate (x.B * x.H * x.T * x.T)
    for b in 0 .. x.B - 1 do
        for h in 0 .. x.H - 1 do
            let hk = h / (x.H / x.Hkv)
            let mutable dist, ent = 0.0, 0.0
            for i in 0 .. x.T - 1 do
                let p, l = probsRow x b h i
                lse[(b * x.H + h) * x.T + i] <- l
                for j in 0 .. i do
                    probs[((b * x.H + h) * x.T + i) * x.T + j] <- p[j]
                    dist <- dist + p[j] * max (float (i - j)) 0.5
                    if p[j] > 0.0 then ent <- ent - p[j] * log p[j]
                    for d in 0 .. x.D - 1 do o[qi x b i h d] <- o[qi x b i h d] + p[j] * x.V[ki x b j hk d]
            stats[(b * x.H + h) * 2] <- dist / float x.T
            stats[(b * x.H + h) * 2 + 1] <- ent / float x.T
    { O = o; Lse = lse; Stats = stats; Probs = probs }

/// Gradients of Σ o⊙dO.
let backward (x: Inputs) (dO: float[]) : Grads =
    let dq = Array.zeroCreate x.Q.Length
    let dk = Array.zeroCreate x.K.Length
    let dv = Array.zeroCreate x.V.Length
    for b in 0 .. x.B - 1 do
        for h in 0 .. x.H - 1 do
            let hk = h / (x.H / x.Hkv)
            for i in 0 .. x.T - 1 do
                let p, _ = probsRow x b h i
                let dp = Array.init (i + 1) (fun j -> sumOver (x.D) (fun d -> dO[qi x b i h d] * x.V[ki x b j hk d]))
                let delta = Array.fold2 (fun s a c -> s + a * c) 0.0 p dp
                for j in 0 .. i do
                    let ds = p[j] * (dp[j] - delta)
                    for d in 0 .. x.D - 1 do
                        dv[ki x b j hk d] <- dv[ki x b j hk d] + p[j] * dO[qi x b i h d]
                        dq[qi x b i h d] <- dq[qi x b i h d] + x.Scale * ds * x.K[ki x b j hk d]
                        dk[ki x b j hk d] <- dk[ki x b j hk d] + x.Scale * ds * x.Q[qi x b i h d]
    { DQ = dq; DK = dk; DV = dv }

/// The scalar loss whose gradient `backward` computes (for finite differences).
let loss (x: Inputs) (dO: float[]) = Array.fold2 (fun s o d -> s + o * d) 0.0 (forward x).O dO
