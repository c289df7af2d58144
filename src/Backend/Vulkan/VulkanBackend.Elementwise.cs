// Elementwise ops (docs/kernels.md §4) on the Vulkan backend: elementwise.comp, one pipeline per op (the op is a
// specialization constant). Tensors of any size: the work is split into chunks that each fit one binding,
// and since every operand has the same element count, chunk c binds the same element range of each.
using System.Runtime.InteropServices;

namespace TaylorCalibrate.Backend.Vulkan;

/// <summary>Op codes of elementwise.comp (= the GLSL constants).</summary>
internal enum ElementwiseOp : uint
{
    Add = 0, Mul = 1, Scale = 2, Axpy = 3,
    Silu = 10, Sigmoid = 11, Softplus = 12, Exp = 13, Log = 14,
    SiluBack = 20, SigmoidBack = 21, SoftplusBack = 22, ExpBack = 23, LogBack = 24,
    SwiGlu = 30, SwiGluBack = 31, ClipScale = 40,
}

/// <summary>Push constants of elementwise.comp (= GLSL Args).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct ElementwiseArgs
{
    public uint N;
    public float S;
}

public sealed partial class VulkanBackend
{
    const uint ElementwiseWg = 256;

    /// <summary>Runs elementwise.comp: <paramref name="inputs"/> on bindings 0..2, <paramref name="outputs"/> on
    /// 3..4 (AXPY also reads binding 3); <paramref name="whole"/> (e.g. the clip norm) is bound unsplit at 1.</summary>
    void Elementwise(ElementwiseOp op, float s, (VulkanTensor T, string Name)[] inputs, (VulkanTensor T, string Name)[] outputs, (VulkanTensor T, string Name)? whole = null)
    {
        long n = outputs[0].T.Count;
        if (n == 0) return;
        uint[] spec = [(uint)op, ElementwiseWg];
        ForEachChunk(n, (first, count) =>
        {
            var b = new Binding[5];
            for (int i = 0; i < 3; i++)
                b[i] = i < inputs.Length ? Bind(inputs[i].T, inputs[i].Name, false, first, count) : Bind(outputs[0].T, outputs[0].Name, false, first, count);
            if (whole is { } w) b[1] = Bind(w.T, w.Name, false);
            b[3] = Bind(outputs[0].T, outputs[0].Name, true, first, count);
            b[4] = outputs.Length > 1 ? Bind(outputs[1].T, outputs[1].Name, true, first, count) : b[3];
            var args = new ElementwiseArgs { N = (uint)count, S = s };
            Launch("elementwise", spec, b, args, Math.Min(Ceil(count, ElementwiseWg), 4096u));
        });
    }

    (VulkanTensor, string) Same(VulkanTensor reference, string refName, Tensor t, string name)
    {
        var v = F32(t, name);
        Check.SameCount(reference, refName, v, name);
        return (v, name);
    }

    /// <inheritdoc />
    public void Add(Tensor a, Tensor b, Tensor y)
    {
        var va = F32(a, "a");
        Elementwise(ElementwiseOp.Add, 0, [(va, "a"), Same(va, "a", b, "b")], [Same(va, "a", y, "y")]);
    }

    /// <inheritdoc />
    public void Mul(Tensor a, Tensor b, Tensor y)
    {
        var va = F32(a, "a");
        Elementwise(ElementwiseOp.Mul, 0, [(va, "a"), Same(va, "a", b, "b")], [Same(va, "a", y, "y")]);
    }

    /// <inheritdoc />
    public void Scale(Tensor x, float s, Tensor y)
    {
        var vx = F32(x, "x");
        Elementwise(ElementwiseOp.Scale, s, [(vx, "x")], [Same(vx, "x", y, "y")]);
    }

    /// <inheritdoc />
    public void Axpy(float s, Tensor x, Tensor y)
    {
        var vx = F32(x, "x");
        Elementwise(ElementwiseOp.Axpy, s, [(vx, "x")], [Same(vx, "x", y, "y")]);
    }

    /// <inheritdoc />
    public void Unary(UnaryOp op, Tensor x, Tensor y)
    {
        var vx = F32(x, "x");
        Elementwise(ElementwiseOp.Silu + (uint)UnaryIndex(op), 0, [(vx, "x")], [Same(vx, "x", y, "y")]);
    }

    /// <inheritdoc />
    public void UnaryBackward(UnaryOp op, Tensor x, Tensor dy, Tensor dx)
    {
        var vx = F32(x, "x");
        Elementwise(ElementwiseOp.SiluBack + (uint)UnaryIndex(op), 0, [(vx, "x"), Same(vx, "x", dy, "dy")], [Same(vx, "x", dx, "dx")]);
    }

    static int UnaryIndex(UnaryOp op) => op switch
    {
        UnaryOp.Silu => 0, UnaryOp.Sigmoid => 1, UnaryOp.Softplus => 2, UnaryOp.Exp => 3, UnaryOp.Log => 4,
        _ => throw new ArgumentException($"unknown unary op {op}"),
    };

    /// <inheritdoc />
    public void SwiGlu(Tensor a, Tensor b, Tensor y)
    {
        var va = F32(a, "a");
        Elementwise(ElementwiseOp.SwiGlu, 0, [(va, "a"), Same(va, "a", b, "b")], [Same(va, "a", y, "y")]);
    }

    /// <inheritdoc />
    public void SwiGluBackward(Tensor a, Tensor b, Tensor dy, Tensor da, Tensor db)
    {
        var va = F32(a, "a");
        Elementwise(ElementwiseOp.SwiGluBack, 0, [(va, "a"), Same(va, "a", b, "b"), Same(va, "a", dy, "dy")],
            [Same(va, "a", da, "da"), Same(va, "a", db, "db")]);
    }
}
