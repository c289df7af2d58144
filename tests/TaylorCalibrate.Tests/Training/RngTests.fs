/// The training RNG (Training/Rng.fs): known outputs of SplitMix64 and xoshiro256**, reproducible sequences
/// per seed, save/restore of the state mid-stream (also through its text form), unbiased ranges, normal
/// moments and shuffles that are permutations.
module TaylorCalibrate.Tests.Training.RngTests

open System
open Expecto
open TaylorCalibrate.Pipeline.Training

let private draws (r: Rng) n = List.init n (fun _ -> r.NextUInt64())

[<Tests>]
let tests =
    testList "Training.Rng" [
        test "SplitMix64 and xoshiro256** give the reference algorithms' outputs" {
            // The first outputs of each published algorithm (SplitMix64 from 1234567; xoshiro256** from the
            // state 1, 2, 3, 4), as an independent implementation computes them: a wrong shift or rotation
            // changes every one.
            let mutable x = 1234567UL
            let sm = List.init 5 (fun _ -> SplitMix64.next &x)
            Expect.equal sm [ 6457827717110365317UL; 3203168211198807973UL; 9817491932198370423UL; 4593380528125082431UL
                              16408922859458223821UL ] "SplitMix64"
            let r = Rng { S0 = 1UL; S1 = 2UL; S2 = 3UL; S3 = 4UL }
            Expect.equal (draws r 6) [ 11520UL; 0UL; 1509978240UL; 1215971899390074240UL; 1216172134540287360UL
                                       607988272756665600UL ] "xoshiro256**"
        }

        test "a seed gives the same sequence every time; other seeds and purposes differ" {
            Expect.equal (draws (Rng.Create 42UL) 100) (draws (Rng.Create 42UL) 100) "same seed"
            Expect.notEqual (draws (Rng.Create 42UL) 4) (draws (Rng.Create 43UL) 4) "neighbouring seed"
            Expect.equal (draws (Rng.ForPurpose(7UL, "shuffle")) 10) (draws (Rng.ForPurpose(7UL, "shuffle")) 10) "same purpose"
            Expect.notEqual (draws (Rng.ForPurpose(7UL, "shuffle")) 4) (draws (Rng.ForPurpose(7UL, "init")) 4) "other purpose"
        }

        test "saving and restoring the state continues the stream exactly" {
            let r = Rng.Create 2026UL
            for _ in 1 .. 37 do r.NextUInt64() |> ignore
            r.NextNormal() |> ignore
            let saved = r.State
            let text = RngState.toText saved
            let continued = [ for _ in 1 .. 20 -> r.NextUInt64() ] @ [ uint64 (r.NextInt 1000); uint64 (r.NextInt 3) ]
            let restored = Rng saved
            let fromText = Rng (RngState.tryParse text).Value
            Expect.equal ([ for _ in 1 .. 20 -> restored.NextUInt64() ] @ [ uint64 (restored.NextInt 1000); uint64 (restored.NextInt 3) ]) continued "from the state"
            Expect.equal ([ for _ in 1 .. 20 -> fromText.NextUInt64() ] @ [ uint64 (fromText.NextInt 1000); uint64 (fromText.NextInt 3) ]) continued "from the text"
            Expect.equal r.State restored.State "same state afterwards"
        }

        test "malformed or all-zero states are rejected" {
            Expect.isNone (RngState.tryParse "0000000000000000:0000000000000000:0000000000000000:0000000000000000") "all zero"
            Expect.isNone (RngState.tryParse "12:34") "too few words"
            Expect.isNone (RngState.tryParse "zzzzzzzzzzzzzzzz:0000000000000001:0000000000000000:0000000000000000") "not hex"
            Expect.throwsT<ArgumentException> (fun () -> Rng { S0 = 0UL; S1 = 0UL; S2 = 0UL; S3 = 0UL } |> ignore) "zero state"
        }

        test "NextInt is uniform over its range and NextDouble stays in [0, 1)" {
            let r = Rng.Create 5UL
            let n, k = 60_000, 6
            let counts = Array.zeroCreate k
            for _ in 1 .. n do
                let v = r.NextInt k
                Expect.isTrue (v >= 0 && v < k) "in range"
                counts[v] <- counts[v] + 1
            // Each count is Binomial(n, 1/k): σ = √(n·(1/k)(1 − 1/k)) ≈ 91; 5σ fails a fair die with p ≈ 6e-7.
            let sigma = sqrt (float n / float k * (1.0 - 1.0 / float k))
            for c in counts do Expect.isLessThan (abs (float c - float n / float k)) (5.0 * sigma) $"counts {counts}"
            for _ in 1 .. 10_000 do
                let d = r.NextDouble()
                Expect.isTrue (d >= 0.0 && d < 1.0) $"double {d}"
            Expect.equal ((Rng.Create 1UL).NextInt 1) 0 "a range of one"
            Expect.throwsT<ArgumentException> (fun () -> r.NextInt 0 |> ignore) "empty range"
        }

        test "normal samples have mean 0 and variance std²" {
            let a = (Rng.Create 11UL).Normals(40_000, 0.02)
            let mean = a |> Array.averageBy float
            let var = a |> Array.averageBy (fun v -> (float v - mean) ** 2.0)
            // Standard errors with n = 40000: the mean's is std/√n = 1e-4, the variance's √(2/n) ≈ 0.71 %
            // relative; both bounds are 5 standard errors.
            Expect.isLessThan (abs mean) 5e-4 "mean"
            Expect.isLessThan (abs (var / 0.0004 - 1.0)) 0.036 "variance"
        }

        test "shuffles are permutations, reproducible per state" {
            let p = (Rng.Create 3UL).Permutation 1000
            Expect.equal (Array.sort p) (Array.init 1000 id) "a permutation"
            Expect.notEqual p (Array.init 1000 id) "not the identity"
            Expect.equal ((Rng.Create 3UL).Permutation 1000) p "same seed, same shuffle"
        }
    ]
