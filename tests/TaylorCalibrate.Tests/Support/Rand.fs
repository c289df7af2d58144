/// Deterministic random test data (seeded per test, so failures reproduce).
module TaylorCalibrate.Tests.Rand

open System

/// n samples of N(0, std²) from a seeded generator (Box–Muller), as float32.
let normal (seed: int) (std: float) (n: int) : float32[] =
    let r = Random seed
    Array.init n (fun _ ->
        let u1 = 1.0 - r.NextDouble()
        let u2 = r.NextDouble()
        float32 (std * sqrt (-2.0 * log u1) * cos (2.0 * Math.PI * u2)))

/// n samples of U[lo, hi) as float32.
let uniform (seed: int) (lo: float) (hi: float) (n: int) : float32[] =
    let r = Random seed
    Array.init n (fun _ -> float32 (lo + (hi - lo) * r.NextDouble()))

/// n integers in [0, maxExclusive).
let ints (seed: int) (maxExclusive: int) (n: int) : int[] =
    let r = Random seed
    Array.init n (fun _ -> r.Next maxExclusive)
