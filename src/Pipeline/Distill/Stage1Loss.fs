/// The Stage-1 per-layer loss (docs/method.md §7): for teacher and student sublayer outputs t, s (N, D),
///   L = (1/N) Σ_n ‖t_n − s_n‖₂ / √D        (the L2 norm per token, not squared),
///   ∂L/∂s_n = (s_n − t_n) / (‖s_n − t_n‖₂ · N · √D).
/// Composed from backend ops (no dedicated kernel): d = s − t; L2Norm gives u = d·r with
/// r = (Σd² + ε)^−½; ‖d‖ = Σ d ⊙ u (exact up to a relative ε/(2‖d‖²)); the gradient is u/(N√D).
/// At a row with d = 0 the norm is not differentiable; u = 0 there, i.e. the subgradient chosen is 0, the
/// minimum-norm element of the subdifferential (the unit ball): an exactly matched token pushes nothing.
/// fp32 throughout; the total over N rows is a fixed-order backend reduction.
module TaylorCalibrate.Pipeline.Distill.Stage1Loss

open System
open TaylorCalibrate.Backend

/// ε inside the L2 norm: small enough that rows with ‖d‖² ≥ 1e-13 see a relative loss error below 1e-7
/// (under fp32 rounding), large enough that r = ε^−½ = 1e10 stays finite for an exactly zero row.
let epsilon = 1e-20f

/// Scratch tensors for rows of width D, reused across calls of the same shape.
type Stage1LossWorkspace(backend: IBackend, rows: int, dim: int) =
    let diff = backend.Allocate [| rows; dim |]     // (N, D) s − t
    let unit = backend.Allocate [| rows; dim |]     // (N, D) (s − t)/‖s − t‖
    let rstd = backend.Allocate [| rows |]          // (N)
    let total = backend.Allocate [| 1 |]
    member _.Backend = backend
    member _.Rows = rows
    member _.Dim = dim
    member _.Diff = diff
    member _.Unit = unit
    member _.Rstd = rstd
    member _.Total = total
    interface IDisposable with
        member _.Dispose() =
            diff.Dispose()
            unit.Dispose()
            rstd.Dispose()
            total.Dispose()

let private check (ws: Stage1LossWorkspace) (name: string) (x: Tensor) =
    if x.Count <> int64 ws.Rows * int64 ws.Dim then
        invalidArg name $"tensor '{name}' has {x.Count} elements; the workspace expects (N={ws.Rows}, D={ws.Dim})"

/// The loss of one layer; when `grad` is given it receives gradScale·∂L/∂student (overwritten, (N, D)), so a
/// caller averaging over layers passes gradScale = 1/layers.
let compute (ws: Stage1LossWorkspace) (teacher: Tensor) (student: Tensor) (grad: Tensor option) (gradScale: float32) : float32 =
    let be = ws.Backend
    check ws "teacher" teacher
    check ws "student" student
    grad |> Option.iter (check ws "grad")
    let N, D = ws.Rows, ws.Dim
    let norm = 1f / (float32 N * MathF.Sqrt(float32 D))
    be.Copy(student, 0L, ws.Diff, 0L, student.Count)
    be.Axpy(-1f, teacher, ws.Diff)                    // d = s − t
    be.L2Norm(ws.Diff, ws.Unit, ws.Rstd, D, epsilon)  // u = d·r
    grad |> Option.iter (fun g -> be.Scale(ws.Unit, gradScale * norm, g))
    be.Mul(ws.Diff, ws.Unit, ws.Diff)                 // d ⊙ u: row sums are ‖d‖
    be.Reduce(ReduceOp.Sum, ws.Diff, ws.Total)
    ws.Total.ToArray()[0] * norm

/// The loss of one layer on fresh scratch (tests, one-off evaluations).
let loss (be: IBackend) (teacher: Tensor) (student: Tensor) (dim: int) : float32 =
    use ws = new Stage1LossWorkspace(be, int (student.Count / int64 dim), dim)
    compute ws teacher student None 1f
