/// Naive double-precision reference of the elementwise ops of IBackend (Add, Mul, Scale, Axpy, Unary,
/// UnaryBackward, SwiGlu, SwiGluBackward), forward and backward. Maths: docs/kernels.md §4 (Elementwise);
/// the activations are documented on UnaryOp in Specs.cs.
module TaylorCalibrate.Tests.Reference.Elementwise

open TaylorCalibrate.Backend

/// σ(x) = 1/(1 + e^−x), written so that neither branch overflows.
let sigmoid (x: float) = if x >= 0.0 then 1.0 / (1.0 + exp -x) else let e = exp x in e / (1.0 + e)

/// ln(1 + u), accurate for small u (a short series where 1 + u would round).
let log1p (u: float) = if abs u < 1e-4 then u - u * u / 2.0 + u * u * u / 3.0 else log (1.0 + u)

/// x·σ(x).
let silu (x: float) = x * sigmoid x

/// d silu / dx = σ(x)(1 + x(1 − σ(x))).
let siluDerivative (x: float) = let s = sigmoid x in s * (1.0 + x * (1.0 - s))

/// max(x,0) + log1p(e^−|x|).
let softplus (x: float) = max x 0.0 + log1p (exp -(abs x))

/// f(x) of a UnaryOp.
let unaryScalar (op: UnaryOp) (x: float) =
    match op with
    | UnaryOp.Silu -> silu x
    | UnaryOp.Sigmoid -> sigmoid x
    | UnaryOp.Softplus -> softplus x
    | UnaryOp.Exp -> exp x
    | UnaryOp.Log -> log x
    | other -> invalidArg "op" $"unknown UnaryOp {other}"

/// f′(x) of a UnaryOp.
let unaryDerivative (op: UnaryOp) (x: float) =
    match op with
    | UnaryOp.Silu -> siluDerivative x
    | UnaryOp.Sigmoid -> let s = sigmoid x in s * (1.0 - s)
    | UnaryOp.Softplus -> sigmoid x
    | UnaryOp.Exp -> exp x
    | UnaryOp.Log -> 1.0 / x
    | other -> invalidArg "op" $"unknown UnaryOp {other}"

/// y = a + b.
let add (a: float[]) (b: float[]) = Array.map2 (+) a b
/// y = a ⊙ b.
let mul (a: float[]) (b: float[]) = Array.map2 (*) a b
/// (da, db) of y = a ⊙ b.
let mulBackward (a: float[]) (b: float[]) (dy: float[]) = Array.map2 (*) dy b, Array.map2 (*) dy a
/// y = s·x.
let scale (s: float) (x: float[]) = Array.map (fun v -> s * v) x
/// y + s·x (the new y of Axpy).
let axpy (s: float) (x: float[]) (y: float[]) = Array.map2 (fun xv yv -> yv + s * xv) x y
/// y = f(x).
let unary (op: UnaryOp) (x: float[]) = Array.map (unaryScalar op) x
/// dx = dy ⊙ f′(x).
let unaryBackward (op: UnaryOp) (x: float[]) (dy: float[]) = Array.map2 (fun xv g -> g * unaryDerivative op xv) x dy
/// y = silu(a) ⊙ b.
let swiGlu (a: float[]) (b: float[]) = Array.map2 (fun av bv -> silu av * bv) a b
/// da = dy ⊙ b ⊙ silu′(a); db = dy ⊙ silu(a).
let swiGluBackward (a: float[]) (b: float[]) (dy: float[]) =
    Array.init a.Length (fun i -> dy[i] * b[i] * siluDerivative a[i]), Array.init a.Length (fun i -> dy[i] * silu a[i])
