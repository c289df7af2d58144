/// The random numbers training draws (shuffles, fresh weights), from a generator whose whole state is four
/// 64-bit words that a checkpoint saves, so a resumed run draws exactly what an uninterrupted one would.
/// Generator: xoshiro256** (Blackman & Vigna, "Scrambled linear pseudorandom number generators", 2021):
///   out = rotl(s1·5, 7)·9;  t = s1 << 17;  s2 ^= s0; s3 ^= s1; s1 ^= s2; s0 ^= s3; s2 ^= t; s3 = rotl(s3, 45).
/// Seeding expands a 64-bit seed with SplitMix64 (Steele, Lea & Flood 2014), as the generator's authors
/// recommend, so nearby seeds give unrelated streams. Nothing here is shared or global: each consumer owns an Rng.
namespace TaylorCalibrate.Pipeline.Training

open System
open System.Globalization

/// The complete state of an Rng (never all zero).
[<Struct>]
type RngState =
    { S0: uint64
      S1: uint64
      S2: uint64
      S3: uint64 }

module RngState =
    /// The state as text, "s0:s1:s2:s3" in 16-digit hex (for checkpoint manifests).
    let toText (s: RngState) = $"{s.S0:x16}:{s.S1:x16}:{s.S2:x16}:{s.S3:x16}"

    /// Parses toText's form; None when malformed or all zero.
    let tryParse (text: string) : RngState option =
        match text.Split ':' with
        | [| a; b; c; d |] when [ a; b; c; d ] |> List.forall (fun w -> w.Length = 16) ->
            let parse (w: string) =
                match UInt64.TryParse(w, NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture) with
                | true, v -> Some v
                | _ -> None
            match parse a, parse b, parse c, parse d with
            | Some s0, Some s1, Some s2, Some s3 when (s0 ||| s1 ||| s2 ||| s3) <> 0UL -> Some { S0 = s0; S1 = s1; S2 = s2; S3 = s3 }
            | _ -> None
        | _ -> None

/// SplitMix64, used to expand seeds.
module SplitMix64 =
    /// Advances `x` and returns the next output.
    let next (x: byref<uint64>) =
        x <- x + 0x9e3779b97f4a7c15UL
        let mutable z = x
        z <- (z ^^^ (z >>> 30)) * 0xbf58476d1ce4e5b9UL
        z <- (z ^^^ (z >>> 27)) * 0x94d049bb133111ebUL
        z ^^^ (z >>> 31)

/// A xoshiro256** generator. Mutable and not thread-safe; copy its State to save it.
[<Sealed; AllowNullLiteral>]
type Rng(state: RngState) =
    do if (state.S0 ||| state.S1 ||| state.S2 ||| state.S3) = 0UL then invalidArg "state" "an all-zero xoshiro256** state never leaves zero"
    let mutable s0 = state.S0
    let mutable s1 = state.S1
    let mutable s2 = state.S2
    let mutable s3 = state.S3
    static let rotl (x: uint64) (k: int) = (x <<< k) ||| (x >>> (64 - k))

    /// A generator seeded from a 64-bit seed (expanded by SplitMix64).
    static member Create(seed: uint64) =
        let mutable x = seed
        let a = SplitMix64.next &x
        let b = SplitMix64.next &x
        let c = SplitMix64.next &x
        let d = SplitMix64.next &x
        Rng { S0 = a; S1 = b; S2 = c; S3 = d }

    /// An independent generator for one purpose of a run ("shuffle", "init", ...): the seed mixed with a
    /// 64-bit FNV-1a hash of the purpose, so adding a consumer never shifts another's stream.
    static member ForPurpose(seed: uint64, purpose: string) =
        let mutable h = 0xcbf29ce484222325UL
        for b in Text.Encoding.UTF8.GetBytes purpose do h <- (h ^^^ uint64 b) * 0x100000001b3UL
        let mutable x = seed ^^^ h
        Rng.Create(SplitMix64.next &x)

    /// The current state; `Rng state` continues from exactly here.
    member _.State = { S0 = s0; S1 = s1; S2 = s2; S3 = s3 }

    /// The next 64 random bits.
    member _.NextUInt64() =
        let result = rotl (s1 * 5UL) 7 * 9UL
        let t = s1 <<< 17
        s2 <- s2 ^^^ s0
        s3 <- s3 ^^^ s1
        s1 <- s1 ^^^ s2
        s0 <- s0 ^^^ s3
        s2 <- s2 ^^^ t
        s3 <- rotl s3 45
        result

    /// Uniform in [0, 1) with 53 random bits.
    member r.NextDouble() = float (r.NextUInt64() >>> 11) * (1.0 / 9007199254740992.0)

    /// Uniform integer in [0, n), unbiased (Lemire's multiply-and-reject).
    member r.NextInt(n: int) =
        if n <= 0 then invalidArg "n" $"range {n} must be ≥ 1"
        let bound = uint64 n
        let threshold = (0UL - bound) % bound // 2^64 mod n: low products below it would over-represent
        let mutable result = -1
        while result < 0 do
            let x = r.NextUInt64()
            let mutable lo = 0UL
            let hi = Math.BigMul(x, bound, &lo) // x·n = hi·2^64 + lo; hi is uniform in [0, n) once lo ≥ threshold
            if lo >= threshold then result <- int hi
        result

    /// A standard normal sample (Box–Muller, cosine branch only, so every sample costs exactly two draws).
    member r.NextNormal() =
        let u1 = 1.0 - r.NextDouble() // (0, 1]: log is finite
        let u2 = r.NextDouble()
        sqrt (-2.0 * log u1) * cos (2.0 * Math.PI * u2)

    /// n samples of N(0, std²) as fp32 (fresh weights).
    member r.Normals(n: int, std: float) : float32[] = Array.init n (fun _ -> float32 (std * r.NextNormal()))

    /// Shuffles `a` in place (Fisher–Yates, from the end).
    member r.Shuffle(a: 'T[]) =
        for i in a.Length - 1 .. -1 .. 1 do
            let j = r.NextInt(i + 1)
            let tmp = a[i]
            a[i] <- a[j]
            a[j] <- tmp

    /// A random permutation of 0..n−1.
    member r.Permutation(n: int) =
        let a = Array.init n id
        r.Shuffle a
        a
